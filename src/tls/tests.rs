//! The handshake, and the relay's TLS side, against a rustls client in the same thread,
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

use crate::relay::{Closed, End, Relays, Side, HOLD};
use mio::{Events, Poll};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// A TLS session relayed to a child's socket pair: the relay, its poll
/// set, the client's connection and wire, and the child's end.
struct Relayed {
    poll: Poll,
    relays: Relays<()>,
    id: crate::relay::RelayId,
    c: ClientConnection,
    wire: Socket,
    child: Socket,
    closed: Vec<Closed<()>>,
    /// Events seen, over all turns.
    seen: usize,
}

fn relayed(min: MinVersion) -> Relayed {
    let (conn, c, (net, wire)) = handshaken(min);
    let (plain, child) = pair();
    let poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    let front = Side::tls(OwnedFd::from(net), conn);
    let back = Side::child(OwnedFd::from(plain));
    let id = relays.add(poll.registry(), front, back, ()).unwrap();
    Relayed {
        poll,
        relays,
        id,
        c,
        wire,
        child,
        closed: Vec::new(),
        seen: 0,
    }
}

impl Relayed {
    /// Client I/O and one poll of the relay (10 ms at most), until `done`
    /// (at most 20 s: a relay that stalls fails the test).
    fn until(&mut self, mut done: impl FnMut(&mut Self) -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        let mut events = Events::with_capacity(16);
        while !done(self) {
            assert!(Instant::now() < end, "stalled");
            client_io(&mut self.c, &self.wire);
            let wait = Duration::from_millis(if self.relays.has_ready() { 0 } else { 10 });
            self.poll.poll(&mut events, Some(wait)).unwrap();
            for e in events.iter() {
                self.seen += 1;
                let r = self.relays.ready(self.poll.registry(), e.token(), e);
                self.closed.extend(r);
            }
            let again = self.relays.serve_again(self.poll.registry());
            self.closed.extend(again);
        }
    }
}

/// Bytes into `got` from a non-blocking socket; true at its EOF.
fn take(sock: &Socket, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match (&*sock).read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Plaintext the client has into `got`; true at its close_notify.
fn client_take(c: &mut ClientConnection, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match c.reader().read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn the_relay_carries_tls_both_ways_and_each_eof_is_the_other_sides_close_notify() {
    for min in [MinVersion::Tls12, MinVersion::Tls13] {
        let mut r = relayed(min);
        r.c.writer().write_all(b"hello child").unwrap();
        let mut got = Vec::new();
        r.until(|r| {
            take(&r.child, &mut got);
            got == b"hello child"
        });
        (&r.child).write_all(b"hello client").unwrap();
        let mut got = Vec::new();
        r.until(|r| {
            client_take(&mut r.c, &mut got);
            got == b"hello client"
        });
        // The client's close_notify: the child reads EOF.
        r.c.send_close_notify();
        r.until(|r| take(&r.child, &mut Vec::new()));
        assert!(r.closed.is_empty());
        // The child's EOF: close_notify to the client, and done.
        r.child.shutdown(std::net::Shutdown::Write).unwrap();
        r.until(|r| client_take(&mut r.c, &mut Vec::new()) && !r.closed.is_empty());
        assert!(matches!(r.closed[0].end, End::Done), "{}", r.closed[0].end);
        assert_eq!((r.closed[0].up, r.closed[0].down), (11, 12));
    }
}

/// Megabytes both ways at once through TLS, each way its own pattern:
/// exact, with the records flushed before the connection ends.
#[test]
fn megabytes_both_ways_through_a_tls_side_are_exact() {
    let mut r = relayed(MinVersion::Tls13);
    let up: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let down: Vec<u8> = (0..5u32 << 20).map(|i| (i * 13 + i / 241) as u8).collect();
    let (mut sent_up, mut sent_down) = (0, 0);
    let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
    let (mut child_eof, mut client_eof) = (false, false);
    r.until(|r| {
        if sent_up < up.len() && !r.c.wants_write() {
            sent_up += r.c.writer().write(&up[sent_up..]).unwrap();
            if sent_up == up.len() {
                r.c.send_close_notify();
            }
        }
        while sent_down < down.len() {
            match (&r.child).write(&down[sent_down..]) {
                Ok(n) => sent_down += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            if sent_down == down.len() {
                r.child.shutdown(std::net::Shutdown::Write).unwrap();
            }
        }
        child_eof |= take(&r.child, &mut got_up);
        client_eof |= client_take(&mut r.c, &mut got_down);
        let held = r.relays.held(r.id).unwrap_or((0, 0));
        assert!(held.0 <= HOLD && held.1 <= HOLD, "{held:?}");
        child_eof && client_eof && !r.closed.is_empty()
    });
    assert!(matches!(r.closed[0].end, End::Done), "{}", r.closed[0].end);
    assert!(got_up == up, "client → child bytes differ");
    assert!(got_down == down, "child → client bytes differ");
}

#[test]
fn a_child_that_does_not_read_stops_the_relay_reading_the_client() {
    let mut r = relayed(MinVersion::Tls13);
    let chunk = [7u8; 16 * 1024];
    let mut sent = 0usize;
    let mut stuck = 0;
    // Until the client's records have not moved for 20 turns (bounded).
    r.until(|r| {
        if !r.c.wants_write() {
            sent += r.c.writer().write(&chunk).unwrap();
            stuck = 0;
        } else {
            stuck += 1;
        }
        stuck > 20 || sent > 64 << 20
    });
    assert!(
        sent < 8 << 20,
        "{sent} bytes taken for a child that reads none"
    );
    let (up, _) = r.relays.held(r.id).unwrap();
    assert!(up <= HOLD, "{up} bytes held");
    // Stalled: no further wake-ups while nobody moves.
    let seen = r.seen;
    let mut turns = 0;
    r.until(|_| {
        turns += 1;
        turns > 10
    });
    assert!(
        r.seen - seen <= 2,
        "{} wake-ups while stalled",
        r.seen - seen
    );
}

/// A client that does not read while its child writes: the records wait
/// for the socket's EPOLLOUT, not a busy loop; once the child ended, the
/// client has `linger` to take the rest, then it is closed.
#[test]
fn a_client_that_does_not_read_is_waited_for_without_spinning_then_let_go() {
    let mut r = relayed(MinVersion::Tls13);
    r.relays.linger(r.id, Duration::from_millis(300));
    // The client's I/O in `until` reads: it gets a wire of its own.
    let (dummy, _other) = pair();
    let wire = std::mem::replace(&mut r.wire, dummy);
    let chunk = [9u8; 64 * 1024];
    let mut turns = 0;
    let mut written = 0;
    r.until(|r| {
        match (&r.child).write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => turns += 1,
            Err(e) => panic!("{e}"),
        }
        turns > 20
    });
    assert!(written < 32 << 20, "{written} bytes taken");
    let seen = r.seen;
    let mut idle = 0;
    r.until(|_| {
        idle += 1;
        idle > 10
    });
    assert!(
        r.seen - seen <= 2,
        "{} wake-ups while stalled",
        r.seen - seen
    );
    r.child.shutdown(std::net::Shutdown::Write).unwrap();
    let mut events = Events::with_capacity(16);
    let end = Instant::now() + Duration::from_secs(20);
    while r.closed.is_empty() {
        assert!(Instant::now() < end, "never let go");
        r.poll
            .poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for e in events.iter() {
            r.closed
                .extend(r.relays.ready(r.poll.registry(), e.token(), e));
        }
        let now = Instant::now();
        r.closed.extend(r.relays.expire(r.poll.registry(), now));
    }
    assert!(
        matches!(r.closed[0].end, End::Linger),
        "{}",
        r.closed[0].end
    );
    drop(wire);
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

/// A drainer's table: `split_off_tls` takes the TLS connections only
/// (out of the poll set they were in), and `drain_alone` serves them in
/// a poll set of its own until the last has ended.
#[test]
fn split_off_tls_takes_only_tls_connections_and_drain_alone_serves_them_to_their_end() {
    let mut r = relayed(MinVersion::Tls13);
    let ((a, _a_peer), (b, _b_peer)) = (pair(), pair());
    (r.relays)
        .add(
            r.poll.registry(),
            Side::stream(OwnedFd::from(a)),
            Side::stream(OwnedFd::from(b)),
            (),
        )
        .unwrap();
    r.c.writer().write_all(b"hi").unwrap();
    r.c.send_close_notify();
    let drained = r.relays.split_off_tls(r.poll.registry());
    assert_eq!((r.relays.len(), drained.len()), (1, 1));
    let server = std::thread::spawn(move || {
        drained
            .drain_alone(Vec::new(), Vec::new(), |_, _| ())
            .unwrap()
    });
    let (mut got, mut child_eof) = (Vec::new(), false);
    let (mut back, mut client_end) = (Vec::new(), false);
    let end = Instant::now() + Duration::from_secs(20);
    while !(child_eof && client_end) {
        assert!(Instant::now() < end, "stalled");
        client_io(&mut r.c, &r.wire);
        if !child_eof && take(&r.child, &mut got) {
            child_eof = true;
            assert_eq!(got, b"hi");
            (&r.child).write_all(b"bye").unwrap();
            r.child.shutdown(std::net::Shutdown::Write).unwrap();
        }
        client_end = client_take(&mut r.c, &mut back);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(back, b"bye");
    assert_eq!(server.join().unwrap(), 1, "one connection, ended");
}

/// A drainer closes a connection at its `max_runtime` deadline (a
/// cutoff) though neither side ends it.
#[test]
fn drain_alone_closes_a_connection_at_its_cutoff() {
    let mut r = relayed(MinVersion::Tls13);
    let drained = r.relays.split_off_tls(r.poll.registry());
    let cutoff = vec![(Instant::now() + Duration::from_millis(300), r.id)];
    let server = std::thread::spawn(move || {
        let mut cut = 0;
        let ended = drained
            .drain_alone(cutoff, Vec::new(), |_, was_cut| cut += was_cut as usize)
            .unwrap();
        (ended, cut)
    });
    let end = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    // The child's end sees EOF once the drainer closed the connection.
    while !take(&r.child, &mut got) {
        assert!(Instant::now() < end, "not cut");
        client_io(&mut r.c, &r.wire);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.join().unwrap(), (1, 1), "ended, of which cut");
}

/// A drainer's pending handshakes (an upgrade's, `relay::Pending`): one
/// driven to its end is relayed to its pair's end, its preface first
/// and the session's SNI given to it; one whose hello never came closes
/// at its deadline (its pair's end sees the timeout's failure byte,
/// then EOF). The
/// drainer ends with them, its table empty from the start.
#[test]
fn drain_alone_finishes_a_pending_handshake_and_closes_one_past_its_deadline() {
    use crate::relay::{Pending, Session};
    let ((net, wire), (back, end)) = (pair(), pair());
    let ((silent_net, _silent), (silent_back, silent_end)) = (pair(), pair());
    let far = Instant::now() + Duration::from_secs(20);
    let soon = Instant::now() + Duration::from_millis(200);
    // Built in the drainer's thread: a preface is not Send.
    let server = std::thread::spawn(move || {
        let config = server_config(&spec(MinVersion::Tls13)).unwrap();
        let pending = |net: Socket, back: Socket, deadline| Pending {
            fd: OwnedFd::from(net),
            session: Session::Handshaking(Box::new(Handshake::new(&config).unwrap())),
            deadline,
            back: OwnedFd::from(back),
            tag: (),
            preface: Box::new(|tls: &mut rustls::ServerConnection| {
                format!("+{}\n", tls.server_name().unwrap_or("-")).into_bytes()
            }),
        };
        let both = vec![
            pending(net, back, far),
            pending(silent_net, silent_back, soon),
        ];
        let drained: Relays<()> = Relays::default();
        drained.drain_alone(Vec::new(), both, |_, _| ()).unwrap()
    });
    let mut c = client();
    let (mut got, mut silent_got) = (Vec::new(), Vec::new());
    let (mut eof, mut silent_eof, mut said) = (false, false, false);
    while !(eof && silent_eof) {
        assert!(Instant::now() < far, "stalled");
        if !c.is_handshaking() && !said {
            said = true;
            c.writer().write_all(b"hi").unwrap();
            c.send_close_notify();
        }
        client_io(&mut c, &wire);
        eof = eof || take(&end, &mut got);
        if eof {
            end.shutdown(std::net::Shutdown::Write).ok();
        }
        silent_eof = silent_eof || take(&silent_end, &mut silent_got);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got, b"+localhost\nhi");
    let late = crate::relay::preamble::failed(Failure::Timeout);
    assert_eq!(silent_got, [late], "{silent_got:?}");
    assert_eq!(server.join().unwrap(), 1, "one relayed, ended");
}
