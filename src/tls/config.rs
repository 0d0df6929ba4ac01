//! The rustls server configuration a `TlsSpec` makes: the protocol
//! versions from `min_version`, the client certificate verifier from
//! `client_ca`, the certificate chosen by SNI, ALPN. Built at load to
//! check the files, and again in the loop at a service's first TLS client
//! (`ServiceRuntime`), from the DER in the spec: no file is read there.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{RootCertStore, ServerConfig};

use super::{CertPair, KeyKind, MinVersion, TlsSpec};

/// What a TLS service's handshakes are made with.
pub type TlsConfig = Arc<ServerConfig>;

/// ring's suites and groups (X25519, P-256, P-384). rustls marks this
/// deprecated for want of a post-quantum key exchange (X25519MLKEM768,
/// aws-lc-rs only); see the module's header for why ring.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The pair as rustls signs with it; an error when the key does not fit
/// the certificate or is of a kind rustls cannot use.
pub(super) fn certified_key(pair: &CertPair) -> Result<CertifiedKey, String> {
    let chain = pair
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let key = match pair.key_kind {
        KeyKind::Pkcs8 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.key.clone())),
        KeyKind::Pkcs1 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(pair.key.clone())),
        KeyKind::Sec1 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(pair.key.clone())),
    };
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| e.to_string())
}

/// The certificate for a client: the `sni` entry its server name asks for
/// (names compared without case), else the default pair.
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    names: Vec<(String, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|sni| self.names.iter().find(|(n, _)| n.eq_ignore_ascii_case(sni)));
        Some(chosen.map_or(&self.default, |(_, k)| k).clone())
    }
}

/// The configuration `spec` describes.
pub fn server_config(spec: &TlsSpec) -> Result<TlsConfig, String> {
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match spec.min_version {
        MinVersion::Tls12 => &[&TLS13, &TLS12],
        MinVersion::Tls13 => &[&TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = if spec.client_ca.is_some() {
        let mut roots = RootCertStore::empty();
        for c in &spec.client_roots {
            roots
                .add(CertificateDer::from(c.clone()))
                .map_err(|e| e.to_string())?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut names = Vec::with_capacity(spec.sni.len());
    for e in &spec.sni {
        names.push((e.name.clone(), Arc::new(certified_key(&e.pair)?)));
    }
    let resolver = BySni {
        default: Arc::new(certified_key(&spec.pair)?),
        names,
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
