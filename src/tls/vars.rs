//! The `SSL_*` variables a child of a TLS service gets, with mod_ssl's
//! names and values (what CGI programs read): `SSL_PROTOCOL` (`TLSv1.3`),
//! `SSL_CIPHER` (OpenSSL's name of the suite), `SSL_TLS_SNI` (when the
//! client sent one), and `SSL_CLIENT_VERIFY` (`SUCCESS` with a verified
//! client certificate, `NONE` without) with `SSL_CLIENT_S_DN`.

use rustls::{CipherSuite, ProtocolVersion, ServerConnection};

use super::dn::subject_dn;
use crate::env::EnvBlock;

/// The values, taken from a finished handshake; a few dozen bytes kept
/// per connection until the child is started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslVars {
    pub protocol: &'static str,
    pub cipher: &'static str,
    pub sni: Option<String>,
    /// The client certificate's subject, when one was verified.
    pub client_dn: Option<String>,
    pub client_verified: bool,
}

/// mod_ssl's `SSL_PROTOCOL` for `v`.
fn protocol_name(v: Option<ProtocolVersion>) -> &'static str {
    match v {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    }
}

/// OpenSSL's name of each suite rustls offers (mod_ssl's `SSL_CIPHER`).
fn cipher_name(s: CipherSuite) -> &'static str {
    match s {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "unknown",
    }
}

impl SslVars {
    /// What the handshake of `conn` settled.
    pub fn of(conn: &ServerConnection) -> SslVars {
        let cert = conn.peer_certificates().and_then(|c| c.first());
        SslVars {
            protocol: protocol_name(conn.protocol_version()),
            cipher: conn
                .negotiated_cipher_suite()
                .map_or("unknown", |s| cipher_name(s.suite())),
            sni: conn.server_name().map(str::to_string),
            client_dn: cert.and_then(|c| subject_dn(c.as_ref())),
            // rustls verified any certificate it holds: with client_ca a
            // handshake without a valid one fails.
            client_verified: cert.is_some(),
        }
    }

    pub fn write_env(&self, env: &mut EnvBlock) {
        env.push("SSL_PROTOCOL", self.protocol);
        env.push("SSL_CIPHER", self.cipher);
        if let Some(sni) = &self.sni {
            env.push("SSL_TLS_SNI", sni.as_str());
        }
        let verify = if self.client_verified {
            "SUCCESS"
        } else {
            "NONE"
        };
        env.push("SSL_CLIENT_VERIFY", verify);
        if let Some(dn) = &self.client_dn {
            env.push("SSL_CLIENT_S_DN", dn.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn every_suite_rustls_offers_has_its_openssl_name() {
        let provider = rustls::crypto::ring::default_provider();
        for s in provider.cipher_suites {
            assert_ne!(cipher_name(s.suite()), "unknown", "{:?}", s.suite());
        }
        assert_eq!(protocol_name(Some(ProtocolVersion::TLSv1_2)), "TLSv1.2");
    }
}
