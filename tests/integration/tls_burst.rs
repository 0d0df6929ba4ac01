//! TLS handshake places under bursts: a legitimate burst from one address
//! (a browser's parallel connections, clients behind one NAT, a
//! benchmark on 127.0.0.1) is served whole when it contends with no one,
//! and when every place is taken a newcomer takes one from the service
//! and address holding the most rather than wait behind them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::tls::{
    client_hello, fd_count, open_after_reading, s_client, tls_service, tools_or_skip, Pki,
};
use crate::util::*;

/// `n` TLS services on ports of their own, named t0, t1, ..., each
/// running `exec`.
fn services(n: usize, exec: &str, pki: &Pki) -> (Vec<u16>, String) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let config = ports
        .iter()
        .enumerate()
        .map(|(i, p)| tls_service(*p, exec, pki, "").replace("\"t\"", &format!("\"t{i}\"")))
        .collect();
    (ports, config)
}

/// A rustls client of `port` trusting the test CA, its ClientHello sent
/// and nothing more: summond answers it and waits for the Finished.
#[allow(deprecated)] // ring's provider, as summond's own (`client_hello`).
fn hello_sent(pki: &Pki, port: u16) -> (rustls::ClientConnection, TcpStream) {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut sock = connect_from([127, 0, 0, 1], port);
    conn.write_tls(&mut sock).unwrap();
    (conn, sock)
}

/// Twelve handshakes at once from 127.0.0.1 on one of forty TLS services
/// (every hello sent before any handshake is finished) are all served:
/// with no one else waiting, one address may hold more than a part of
/// its service's places. Before, it held 2 there (a quarter of the
/// equal share, 8, of the 256 places), and its third to twelfth were
/// refused as "too many TLS handshakes at once from this client".
#[test]
fn a_burst_from_one_address_is_served_whole_on_one_of_forty_tls_services() {
    if !tools_or_skip("tls_burst", &["openssl"]) {
        return;
    }
    let certs = TempDir::new("pki");
    let pki = Pki::new(&certs.0);
    let (ports, config) = services(40, &sh("echo served"), &pki);
    let s = Summond::start(&config);
    let burst: Vec<_> = (0..12).map(|_| hello_sent(&pki, ports[0])).collect();
    for (i, (conn, sock)) in burst.into_iter().enumerate() {
        let mut stream = rustls::StreamOwned::new(conn, sock);
        let mut out = String::new();
        // The child's line, then close_notify (or a refusal's close).
        let _ = stream.read_to_string(&mut out);
        assert_eq!(out, "served\n", "client {i}\n{}", s.log_text());
    }
    assert_eq!(s.log_count("refused"), 0, "{}", s.log_text());
}

/// Eight `openssl s_time -new` at once from 127.0.0.1 against a TLS
/// service with a program per connection, each doing handshake after
/// handshake: none is ever refused. Before, the loop accepted and
/// answered up to 128 hellos before it read any Finished, so the
/// handshakes of the one address piled past its bound (64) and summond
/// refused some ("too many TLS handshakes at once from this client"):
/// this test failed so in 3 runs of 3 (debug build, within its first
/// round), but it hangs on scheduling and cannot be made to fail every
/// time without the fix.
#[test]
fn eight_clients_doing_handshake_after_handshake_are_never_refused() {
    if !tools_or_skip("tls_sequential", &["openssl", "timeout"]) {
        return;
    }
    let certs = TempDir::new("pki");
    let pki = Pki::new(&certs.0);
    let (ports, config) = services(1, "[\"/bin/cat\"]", &pki);
    let s = Summond::start(&format!("[daemon]\nmax_children = 4096\n{config}"));
    let connect = format!("127.0.0.1:{}", ports[0]);
    for round in 0..2 {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                Command::new("timeout")
                    .args(["30", "openssl", "s_time", "-connect", &connect, "-new"])
                    .args(["-tls1_3", "-time", "3", "-CAfile", &pki.path("ca.pem")])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("openssl s_time")
            })
            .collect();
        for c in clients {
            let out = c.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let done = text
                .lines()
                .find_map(|l| l.split_once(" connections in ").map(|(n, _)| n.trim()))
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0);
            assert!(
                out.status.success() && done > 0,
                "round {round}: {text}{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                s.log_text()
            );
        }
    }
    assert_eq!(s.log_count("refused"), 0, "{}", s.log_text());
}

/// Every one of the 256 handshake places held by stalled handshakes
/// (four addresses × 64, each at its bound, on one of two services):
/// a client of the other service, and then (that one still holding its
/// place) one of the same service from another address, are each served
/// at once, each taking the place of one stalled handshake of the
/// address holding the most (refused: "let go for another client's");
/// the other 254 stay. Before, the two services had 128 places each, 32
/// per address, and the rest of the flood was refused.
#[test]
fn at_the_handshake_bound_a_newcomer_takes_a_place_from_whoever_holds_most() {
    if !tools_or_skip("tls_full_table", &["openssl"]) {
        return;
    }
    let certs = TempDir::new("pki");
    let pki = Pki::new(&certs.0);
    let (ports, config) = services(2, &sh("echo served"), &pki);
    let s = Summond::start(&config);
    let before = settled_fd_count(s.pid());
    // A whole hello each: given 10 s, not the 3 s of a silent one.
    let (hello, flooded) = (client_hello(), ports[0]);
    let stalled: Vec<_> = (2..6)
        .flat_map(|last| (0..64).map(move |_| connect_from([127, 0, 0, last], flooded)))
        .map(|mut c| {
            c.write_all(&hello).unwrap();
            c
        })
        .collect();
    assert!(
        wait_until(TIMEOUT, || fd_count(s.pid()) >= before + 256),
        "{} fds\n{}",
        fd_count(s.pid()),
        s.log_text()
    );
    // The other service's client, its hello answered, holds its place
    // while the same service's client comes.
    let (conn, sock) = hello_sent(&pki, ports[1]);
    let (ok, out) = s_client(&pki, ports[0], &[], b"");
    assert!(ok && out.contains("served"), "{out}\n{}", s.log_text());
    let mut other = String::new();
    let _ = rustls::StreamOwned::new(conn, sock).read_to_string(&mut other);
    assert_eq!(other, "served\n", "{}", s.log_text());
    let held = stalled.iter().filter(|c| open_after_reading(c)).count();
    assert_eq!(held, 254, "{}", s.log_text());
    // Refusals are logged once per address and interval: one from
    // 127.0.0.2 (its were nearest their deadline), one from 127.0.0.3
    // (which then held the most).
    for from in ["127.0.0.2", "127.0.0.3"] {
        let line = format!("refused {from}");
        let evicted = s
            .log_text()
            .lines()
            .any(|l| l.contains(&line) && l.contains("let go for another client's"));
        assert!(evicted, "{from}\n{}", s.log_text());
    }
}

/// Reproducer (atk1): a client whose ClientHello is in and answered
/// holds its place against silent connections from many addresses (one
/// each): the docs say a silent handshake is let go "before one whose
/// hello is in". But every handshake's deadline is its accept plus
/// `HELLO_TIMEOUT` until that runs out, so `victim` goes by accept order
/// alone: the 257th silent newcomer (300 addresses, each holding 1, as
/// the real client does) takes the real client's place, the oldest.
/// Over the network a silent flood of R connections/s lets go every
/// handshake older than 256/R s (1,000/s: any client with an RTT over
/// ~250 ms never finishes).
#[test]
fn a_handshake_whose_hello_is_in_outlives_silent_connections_from_many_addresses() {
    if !tools_or_skip("tls_silent_many", &["openssl"]) {
        return;
    }
    let certs = TempDir::new("pki");
    let pki = Pki::new(&certs.0);
    let (ports, config) = services(1, &sh("echo served"), &pki);
    let s = Summond::start(&config);
    let (conn, sock) = hello_sent(&pki, ports[0]);
    // Its hello read and answered before the flood.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let silent: Vec<_> = (0..300u16)
        .map(|i| connect_from([127, 0, 2 + (i / 250) as u8, 1 + (i % 250) as u8], ports[0]))
        .collect();
    assert!(
        wait_until(TIMEOUT, || s.log_count("let go for another client's") >= 44),
        "{}",
        s.log_text()
    );
    let mut out = String::new();
    let _ = rustls::StreamOwned::new(conn, sock).read_to_string(&mut out);
    drop(silent);
    assert_eq!(out, "served\n", "{}", s.log_text());
}

/// Reproducer (atk1): with the 256 places held by silent connections
/// from 256 addresses (one each), a client that has one handshake under
/// way (a browser's second parallel connection; `openssl s_time`'s next
/// connection before summond read its last Finished) is refused outright
/// for its next: `victim` finds no client holding more than its 1, and
/// the refusal is logged as "too many TLS handshakes at once from this
/// client" (`Failure::TooMany`), a client holding 1 of its 64.
#[test]
fn a_client_with_one_handshake_under_way_is_not_refused_its_second_by_a_many_address_flood() {
    if !tools_or_skip("tls_second_refused", &["openssl"]) {
        return;
    }
    let certs = TempDir::new("pki");
    let pki = Pki::new(&certs.0);
    let (ports, config) = services(1, &sh("echo served"), &pki);
    let s = Summond::start(&config);
    let before = settled_fd_count(s.pid());
    let silent: Vec<_> = (0..256u16)
        .map(|i| connect_from([127, 0, 2 + (i / 250) as u8, 1 + (i % 250) as u8], ports[0]))
        .collect();
    assert!(
        wait_until(TIMEOUT, || fd_count(s.pid()) >= before + 256),
        "{}",
        s.log_text()
    );
    // Its first takes a silent one's place (it holds 0 then).
    let (first, sock) = hello_sent(&pki, ports[0]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (second, sock2) = hello_sent(&pki, ports[0]);
    let mut out = String::new();
    let _ = rustls::StreamOwned::new(second, sock2).read_to_string(&mut out);
    drop((first, sock, silent));
    assert_eq!(out, "served\n", "{}", s.log_text());
}

/// summond's fds, without one it holds only for a moment (a /proc read
/// of its own, just after its start): the fewest of a few reads. A
/// count taken with such an fd open was one too many as a base, and a
/// full table of 256 then never reached it (CI, once).
fn settled_fd_count(pid: i32) -> usize {
    (0..5)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            fd_count(pid)
        })
        .min()
        .unwrap_or(0)
}
