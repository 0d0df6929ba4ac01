//! The handshake and the pump against a rustls client in the same thread,
//! over socket pairs (non-blocking, as in the loop). `testdata/`: a CA
//! and a server certificate for localhost (P-256, valid to 2126).

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use socket2::{Domain, Socket, Type};

use super::*;

const CA: &[u8] = include_bytes!("testdata/ca.pem");
const CERT: &[u8] = include_bytes!("testdata/s.pem");
const KEY: &[u8] = include_bytes!("testdata/s.key");

fn spec(min_version: MinVersion) -> TlsSpec {
    let chain = CertificateDer::pem_slice_iter(CERT)
        .map(|c| c.unwrap().as_ref().to_vec())
        .collect();
    let PrivateKeyDer::Pkcs8(key) = PrivateKeyDer::from_pem_slice(KEY).unwrap() else {
        panic!("openssl writes PKCS#8");
    };
    TlsSpec {
        cert: "s.pem".into(),
        key: "s.key".into(),
        pair: CertPair {
            chain,
            key: key.secret_pkcs8_der().to_vec(),
            key_kind: KeyKind::Pkcs8,
        },
        client_ca: None,
        client_roots: Vec::new(),
        alpn: Vec::new(),
        min_version,
        sni: Vec::new(),
    }
}

#[allow(deprecated)]
fn client() -> ClientConnection {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(CA) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    ClientConnection::new(Arc::new(config), name).unwrap()
}

fn pair() -> (Socket, Socket) {
    let (a, b) = Socket::pair(Domain::UNIX, Type::STREAM, None).unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// The client's side of the wire: send what it has, take what is there.
fn client_io(c: &mut ClientConnection, sock: &Socket) {
    while c.wants_write() {
        match c.write_tls(&mut &*sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("client write: {e}"),
        }
    }
    match c.read_tls(&mut &*sock) {
        Ok(_) => {
            c.process_new_packets().unwrap();
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("client read: {e}"),
    }
}

/// A finished handshake: the server's connection, the client's, and the
/// wire (server end, client end).
fn handshaken(min: MinVersion) -> (ServerConnection, ClientConnection, (Socket, Socket)) {
    let config = server_config(&spec(min)).unwrap();
    let mut hs = Handshake::new(&config).unwrap();
    let mut c = client();
    let (net, wire) = pair();
    for _ in 0..20 {
        client_io(&mut c, &wire);
        match hs.drive(&mut &net) {
            Step::Pending => {}
            Step::Done => {
                return (hs.into_conn(), c, (net, wire));
            }
            Step::Failed(f) => panic!("handshake failed: {f}"),
        }
    }
    panic!("no handshake in 20 rounds");
}

use rustls::ServerConnection;

/// Both sockets reported ready, as their events would, then a pump.
fn pumped(pump: &mut TlsPump, net: &Socket, plain: &Socket) -> PumpStep {
    pump.net_ready();
    pump.plain_ready();
    pump.pump(net, plain)
}

#[test]
fn the_pump_carries_bytes_both_ways_and_each_eof_is_the_other_sides_close_notify() {
    for min in [MinVersion::Tls12, MinVersion::Tls13] {
        let (conn, mut c, (net, wire)) = handshaken(min);
        let (plain, child) = pair();
        let mut pump = TlsPump::new(conn);
        c.writer().write_all(b"hello child").unwrap();
        client_io(&mut c, &wire);
        assert_eq!(pumped(&mut pump, &net, &plain), PumpStep::Waiting);
        let mut buf = [0u8; 64];
        let n = (&child).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello child");
        (&child).write_all(b"hello client").unwrap();
        pumped(&mut pump, &net, &plain);
        client_io(&mut c, &wire);
        let n = c.reader().read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello client");
        // The client's close_notify: the child reads EOF.
        c.send_close_notify();
        client_io(&mut c, &wire);
        assert_eq!(pumped(&mut pump, &net, &plain), PumpStep::Waiting);
        assert_eq!((&child).read(&mut buf).unwrap(), 0, "EOF for the child");
        // The child's EOF: close_notify to the client, and done.
        child.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(pumped(&mut pump, &net, &plain), PumpStep::Done);
        client_io(&mut c, &wire);
        assert_eq!(
            c.reader().read(&mut buf).unwrap(),
            0,
            "close_notify received"
        );
    }
}

#[test]
fn a_child_that_does_not_read_stops_the_pump_reading_the_client() {
    let (conn, mut c, (net, wire)) = handshaken(MinVersion::Tls13);
    let (plain, _child) = pair();
    let mut pump = TlsPump::new(conn);
    let chunk = [7u8; 16 * 1024];
    let mut sent = 0usize;
    let mut stuck = false;
    for _ in 0..10_000 {
        if !c.wants_write() {
            sent += c.writer().write(&chunk).unwrap();
        }
        let before = c.wants_write();
        client_io(&mut c, &wire);
        pumped(&mut pump, &net, &plain);
        if before && c.wants_write() {
            // The wire is full: the pump took no more from it.
            stuck = true;
            break;
        }
    }
    assert!(stuck, "the client could write without end ({sent} bytes)");
    // What is in flight is the sockets' buffers and a record or two.
    assert!(
        sent < 8 << 20,
        "{sent} bytes taken for a child that reads none"
    );
}

#[test]
fn a_plaintext_client_fails_the_handshake_as_not_tls() {
    let config = server_config(&spec(MinVersion::Tls12)).unwrap();
    let mut hs = Handshake::new(&config).unwrap();
    let (net, wire) = pair();
    (&wire).write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(hs.drive(&mut &net), Step::Failed(Failure::NotTls));
    let (net, wire) = pair();
    let mut hs = Handshake::new(&config).unwrap();
    assert_eq!(hs.drive(&mut &net), Step::Pending, "nothing yet");
    drop(wire);
    assert_eq!(hs.drive(&mut &net), Step::Failed(Failure::Closed));
}

#[test]
fn min_version_1_3_refuses_a_1_2_only_client() {
    let config = server_config(&spec(MinVersion::Tls13)).unwrap();
    let mut hs = Handshake::new(&config).unwrap();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(CA) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config12 = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(Arc::new(config12), name).unwrap();
    let (net, wire) = pair();
    client_io(&mut c, &wire);
    assert_eq!(hs.drive(&mut &net), Step::Failed(Failure::NoOverlap));
}

#[test]
fn the_vars_of_a_handshake_are_mod_ssls() {
    let (conn, _, _) = handshaken(MinVersion::Tls13);
    let vars = SslVars::of(&conn);
    assert_eq!(vars.protocol, "TLSv1.3");
    assert!(vars.cipher.starts_with("TLS_"), "{}", vars.cipher);
    assert_eq!(vars.sni.as_deref(), Some("localhost"));
    assert!(!vars.client_verified);
    let mut env = crate::env::EnvBlock::default();
    vars.write_env(&mut env);
    let got = env.strings();
    assert!(
        got.contains(&"SSL_CLIENT_VERIFY=NONE".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"SSL_TLS_SNI=localhost".to_string()),
        "{got:?}"
    );
}

#[test]
fn a_client_that_closes_right_after_its_finished_has_a_finished_handshake() {
    // openssl s_time -new: the client is done at its Finished and closes
    // before summond reads it; the session tickets summond then owes it
    // cannot be written. That is a finished handshake, not refusal `tls`.
    let config = server_config(&spec(MinVersion::Tls13)).unwrap();
    let mut hs = Handshake::new(&config).unwrap();
    let mut c = client();
    let (net, wire) = pair();
    for _ in 0..20 {
        client_io(&mut c, &wire);
        if !c.is_handshaking() {
            break;
        }
        assert_eq!(hs.drive(&mut &net), Step::Pending);
    }
    assert!(!c.is_handshaking(), "the client is done");
    client_io(&mut c, &wire);
    drop(wire);
    assert_eq!(hs.drive(&mut &net), Step::Done);
}
