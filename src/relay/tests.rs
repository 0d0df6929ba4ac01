//! The relay over real sockets (loopback TCP, Unix socket pairs), driven
//! by a real poll loop here while threads play the client and the server.

use super::*;
use mio::{Events, Poll};
use nix::libc;
use socket2::Socket;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

/// The relay's end and the peer's end of a loopback TCP connection.
fn tcp_pair() -> (OwnedFd, Socket) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    (ours.into(), Socket::from(OwnedFd::from(peer)))
}

fn unix_pair() -> (OwnedFd, Socket) {
    let (ours, peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    (ours.into(), Socket::from(OwnedFd::from(peer)))
}

/// A relay between two TCP connections: its poll, the table, and the
/// client's and the server's ends.
fn tcp_relay() -> (Poll, Relays<()>, Socket, Socket) {
    let (front, client) = tcp_pair();
    let (back, server) = tcp_pair();
    let poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    relays
        .add(poll.registry(), Side::stream(front), Side::stream(back), ())
        .unwrap();
    (poll, relays, client, server)
}

/// Poll and feed the relay until `done` says so (at most 60 s: a relay
/// that stalls fails the test instead of hanging it). Returns the
/// connections that ended and the number of events seen.
fn drive<T>(
    poll: &mut Poll,
    relays: &mut Relays<T>,
    done: impl FnMut(&Relays<T>, &[Closed<T>]) -> bool,
) -> (Vec<Closed<T>>, usize) {
    drive_as(false, poll, relays, done)
}

/// `drive`, with the deadlines due on the way (`Relays::expire`), as the
/// server's loop does.
fn drive_as<T>(
    expiring: bool,
    poll: &mut Poll,
    relays: &mut Relays<T>,
    mut done: impl FnMut(&Relays<T>, &[Closed<T>]) -> bool,
) -> (Vec<Closed<T>>, usize) {
    let mut events = Events::with_capacity(64);
    let mut closed = Vec::new();
    let mut seen = 0;
    let until = Instant::now() + Duration::from_secs(60);
    while !done(relays, &closed) {
        assert!(Instant::now() < until, "the relay stalled");
        let wait = if relays.has_ready() {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        };
        poll.poll(&mut events, Some(wait)).unwrap();
        for e in events.iter() {
            seen += 1;
            closed.extend(relays.ready(poll.registry(), e.token(), e));
        }
        closed.extend(relays.serve_again(poll.registry()));
        if expiring {
            closed.extend(relays.expire(poll.registry(), Instant::now()));
        }
    }
    (closed, seen)
}

/// `len` bytes no two runs of which repeat at a short period.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A peer that writes `out` then shuts its write half, while reading
/// everything until EOF; the thread returns what it read.
fn talk(stream: Socket, out: Vec<u8>) -> thread::JoinHandle<Vec<u8>> {
    let mut writer = stream.try_clone().unwrap();
    thread::spawn(move || {
        let w = thread::spawn(move || {
            writer.write_all(&out).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        let mut stream = stream;
        stream.read_to_end(&mut got).unwrap();
        w.join().unwrap();
        got
    })
}

fn one_ended<T>(_: &Relays<T>, closed: &[Closed<T>]) -> bool {
    !closed.is_empty()
}

/// Megabytes both ways at once, each way a different pattern: every
/// byte arrives, in order, and both EOFs are passed on.
fn both_ways(front: (OwnedFd, Socket), back: (OwnedFd, Socket)) {
    let (up, down) = (pattern(6 << 20, 1), pattern(5 << 20, 2));
    let mut poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    let (front_side, back_side) = (Side::stream(front.0), Side::stream(back.0));
    relays
        .add(poll.registry(), front_side, back_side, "c")
        .unwrap();
    let client = talk(front.1, up.clone());
    let server = talk(back.1, down.clone());
    let (closed, _) = drive(&mut poll, &mut relays, one_ended);
    assert!(matches!(closed[0].end, End::Done), "{}", closed[0].end);
    assert_eq!(
        (closed[0].up, closed[0].down),
        (up.len() as u64, down.len() as u64)
    );
    assert!(server.join().unwrap() == up, "front → back bytes differ");
    assert!(client.join().unwrap() == down, "back → front bytes differ");
    assert!(relays.is_empty());
}

#[test]
fn megabytes_both_ways_over_tcp_are_exact() {
    both_ways(tcp_pair(), tcp_pair());
}

#[test]
fn megabytes_both_ways_over_unix_sockets_are_exact() {
    both_ways(unix_pair(), unix_pair());
}

#[test]
fn megabytes_both_ways_between_tcp_and_a_unix_socket_are_exact() {
    both_ways(tcp_pair(), unix_pair());
}

/// One side says EOF and then still reads: the other gets the EOF and
/// its answer still arrives, then its own EOF ends the connection.
fn half_close(first: Which) {
    let (mut poll, mut relays, mut client, mut server) = tcp_relay();
    let (a, b) = match first {
        Which::Front => (&mut client, &mut server),
        Which::Back => (&mut server, &mut client),
    };
    a.write_all(b"question").unwrap();
    a.shutdown(Shutdown::Write).unwrap();
    let mut b2 = b.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        b2.read_to_end(&mut got).unwrap();
        b2.write_all(b"answer after your EOF").unwrap();
        b2.shutdown(Shutdown::Write).unwrap();
        got
    });
    let (closed, _) = drive(&mut poll, &mut relays, one_ended);
    assert_eq!(reader.join().unwrap(), b"question");
    let mut got = Vec::new();
    a.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"answer after your EOF");
    assert!(matches!(closed[0].end, End::Done), "{}", closed[0].end);
}

#[test]
fn the_clients_eof_is_passed_on_and_the_answer_still_comes_back() {
    half_close(Which::Front);
}

#[test]
fn the_backends_eof_is_passed_on_and_the_client_may_still_send() {
    half_close(Which::Back);
}

/// A backend that never reads: the client's bytes stop being read once
/// the relay holds its bound, the client's writes block, and the
/// stalled connection wakes the loop no more.
#[test]
fn a_side_that_never_reads_stops_the_other_from_being_read() {
    let (front, mut client) = tcp_pair();
    let (back, _server) = tcp_pair();
    let mut poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    let id = relays
        .add(poll.registry(), Side::stream(front), Side::stream(back), ())
        .unwrap();
    client.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0u64;
    let mut blocked_turns = 0;
    // Write until the client's writes have blocked for 50 turns in a row
    // while the relay kept being polled (bounded: 64 MiB at most).
    while blocked_turns < 50 && written < 64 << 20 {
        match client.write(&chunk) {
            Ok(n) => {
                written += n as u64;
                blocked_turns = 0;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => blocked_turns += 1,
            Err(e) => panic!("{e}"),
        }
        let mut turns = 0;
        drive(&mut poll, &mut relays, |_, _| {
            turns += 1;
            turns > 2
        });
    }
    assert!(written < 64 << 20, "the client was never held back");
    let (up, _) = relays.held(id).unwrap();
    assert!(up <= HOLD, "{up} bytes held");
    // Stalled: no further wake-ups while nobody moves.
    let mut turns = 0;
    let (_, seen) = drive(&mut poll, &mut relays, |_, _| {
        turns += 1;
        turns > 10
    });
    assert!(seen <= 2, "{seen} wake-ups while stalled");
}

/// A side that resets has what it sent before passed on, then its end;
/// the relay ends when the other side closes, and says which reset and
/// why.
#[test]
fn a_reset_passes_on_what_came_before_it_and_says_which() {
    let (mut poll, mut relays, mut client, mut server) = tcp_relay();
    // An early answer, the request unread: the server's close resets.
    client
        .write_all(b"a request the server never reads")
        .unwrap();
    server.write_all(b"answer before the reset").unwrap();
    server.set_linger(Some(Duration::ZERO)).unwrap();
    drop(server);
    client.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let (closed, _) = drive(&mut poll, &mut relays, |_, closed| {
        let mut buf = [0u8; 64];
        match client.read(&mut buf) {
            Ok(0) => {
                // The answer and its end are in: the client closes.
                let _ = client.shutdown(Shutdown::Write);
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        !closed.is_empty()
    });
    assert_eq!(got, b"answer before the reset");
    match &closed[0].end {
        End::Failed {
            side: Which::Back,
            err,
            ..
        } => {
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}")
        }
        other => panic!("ended: {other}"),
    }
}

/// After a side's reset, a side that does not take what it is owed
/// (the bytes sent before the reset) keeps the connection no longer than
/// `AFTER_RESET`, and costs nothing meanwhile.
#[test]
fn after_a_reset_a_side_that_takes_nothing_is_closed_at_the_bound() {
    let (front, client) = tcp_pair();
    let (back, server) = tcp_pair();
    client.set_recv_buffer_size(4096).unwrap();
    let mut poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    relays
        .add(poll.registry(), Side::stream(front), Side::stream(back), ())
        .unwrap();
    // More than the client's socket and summond's buffer hold, then the
    // server's reset; the client reads nothing.
    server.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    while (&server).write(&chunk).is_ok() {}
    server.set_linger(Some(Duration::ZERO)).unwrap();
    drop(server);
    let mut turns = 0;
    let (_, seen) = drive(&mut poll, &mut relays, |_, _| {
        turns += 1;
        turns > 50
    });
    assert!(seen < 200, "{seen} events in 50 turns: no spin");
    assert_eq!(relays.len(), 1, "kept while the client may still take it");
    let later = Instant::now() + AFTER_RESET + Duration::from_millis(10);
    let closed = relays.expire(poll.registry(), later);
    assert_eq!(closed.len(), 1);
    assert!(matches!(
        closed[0].end,
        End::Failed {
            side: Which::Back,
            ..
        }
    ));
    drop(client);
}

/// A client's reset while its server keeps sending ends the connection
/// once the server took what it was owed: the server's output is not
/// read and dropped (a core's worth for the bound, atk11).
#[test]
fn a_reset_beside_a_side_that_keeps_sending_ends_at_once() {
    let (mut poll, mut relays, client, server) = tcp_relay();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sending = {
        let stop = stop.clone();
        thread::spawn(move || {
            let chunk = vec![7u8; 64 * 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if (&server).write(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    let mut turns = 0;
    drive(&mut poll, &mut relays, |_, _| {
        turns += 1;
        turns > 5
    });
    client.set_linger(Some(Duration::ZERO)).unwrap();
    drop(client);
    // Deadlines as they come: one at the bound would be after drive
    // gave up on the relay as stalled.
    let (closed, seen) = drive_as(true, &mut poll, &mut relays, one_ended);
    assert!(matches!(
        closed[0].end,
        End::Failed {
            side: Which::Front,
            ..
        }
    ));
    // Reading the server's output to drop it took an event per read.
    assert!(seen < 1000, "{seen} events");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sending.join();
}

/// A back side whose connect is refused ends the relay with that reason,
/// and the client's side is closed.
#[test]
fn a_refused_connect_ends_the_relay() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (front, _client) = tcp_pair();
    let sock = Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_nonblocking(true).unwrap();
    match sock.connect(&port.into()) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return,
        other => panic!("{other:?}"),
    }
    let mut poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    relays
        .add(
            poll.registry(),
            Side::stream(front),
            Side::connecting(sock.into()),
            (),
        )
        .unwrap();
    let (closed, _) = drive(&mut poll, &mut relays, one_ended);
    match &closed[0].end {
        End::Connect(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
        other => panic!("ended: {other}"),
    }
}

/// A connect in progress: bytes the client sent before it ended are
/// held and delivered after.
#[test]
fn bytes_wait_for_a_connect_in_progress() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (front, mut client) = tcp_pair();
    client.write_all(b"early").unwrap();
    let sock = Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_nonblocking(true).unwrap();
    let _ = sock.connect(&l.local_addr().unwrap().into());
    let mut poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    relays
        .add(
            poll.registry(),
            Side::stream(front),
            Side::connecting(sock.into()),
            (),
        )
        .unwrap();
    let (mut server, _) = l.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        got
    });
    let mut got = None;
    let _ = drive(&mut poll, &mut relays, |_, _| {
        if reader.is_finished() && got.is_none() {
            got = Some(());
        }
        got.is_some()
    });
    assert_eq!(reader.join().unwrap(), b"early");
}

/// Idle connections hold no buffer: one is taken for a read and given
/// back once drained.
#[test]
fn an_idle_connection_holds_no_buffer() {
    let mut poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    let mut peers = Vec::new();
    for unix in [false, true] {
        let (front, client) = tcp_pair();
        let (back, server) = if unix { unix_pair() } else { tcp_pair() };
        relays
            .add(poll.registry(), Side::stream(front), Side::stream(back), ())
            .unwrap();
        (&client).write_all(b"ping").unwrap();
        (&server).write_all(b"pong").unwrap();
        peers.push((client, server));
    }
    for (client, server) in &peers {
        let mut got = [0u8; 4];
        // Read while the relay is driven (a thread each would do; the
        // kernel holds the 4 bytes, so drive first, then read).
        let mut turns = 0;
        drive(&mut poll, &mut relays, |_, _| {
            turns += 1;
            turns > 5
        });
        (&*server).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        (&*client).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
    }
    assert_eq!(relays.len(), 2);
    assert_eq!(relays.holding(), 0, "an idle flow holds a buffer");
}

/// A relay of a client to a child's socket pair whose end is held
/// (`hold_end`, `at_most`): the child wrote `abc` and closed; the relay
/// is driven until the client has the bytes, and a while more.
fn held_after_abc(at_most: Duration) -> (Poll, Relays<()>, RelayId, Socket) {
    let (front, client) = unix_pair();
    let (back, mut child) = unix_pair();
    let mut poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    let id = relays
        .add(poll.registry(), Side::stream(front), Side::child(back), ())
        .unwrap();
    relays.hold_end(id, at_most);
    child.write_all(b"abc").unwrap();
    drop(child);
    let mut turns = 0;
    let (closed, _) = drive(&mut poll, &mut relays, |_, _| {
        turns += 1;
        turns > 20
    });
    assert!(closed.is_empty());
    client.set_nonblocking(true).unwrap();
    (poll, relays, id, client)
}

/// What the client can read now: bytes, then `Some(0)` at EOF, `None`
/// when nothing (more) is there yet.
fn read_now(mut c: &Socket) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (got, false),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_held_end_waits_for_its_word_and_a_whole_one_is_passed_on() {
    let (mut poll, mut relays, id, client) = held_after_abc(Duration::from_secs(60));
    assert_eq!(read_now(&client), (b"abc".to_vec(), false), "held");
    assert!(relays.settle_end(poll.registry(), id, true).is_none());
    let (closed, _) = drive(&mut poll, &mut relays, |_, _| true);
    assert!(closed.is_empty(), "the client may still send");
    assert_eq!(read_now(&client), (Vec::new(), true), "passed on");
    // A later cut does not undo it.
    assert!(relays.settle_end(poll.registry(), id, false).is_none());
    assert_eq!(relays.len(), 1);
}

#[test]
fn a_cut_end_closes_the_front_without_passing_it_on() {
    let (poll, mut relays, id, client) = held_after_abc(Duration::from_secs(60));
    let closed = relays.settle_end(poll.registry(), id, false).unwrap();
    assert!(matches!(closed.end, End::Truncated), "{}", closed.end);
    assert_eq!((closed.up, closed.down), (0, 3));
    assert_eq!(read_now(&client), (b"abc".to_vec(), true));
    assert!(relays.is_empty());
}

#[test]
fn a_held_end_with_no_word_is_passed_on_at_its_bound() {
    let (poll, mut relays, id, client) = held_after_abc(Duration::ZERO);
    assert_eq!(read_now(&client), (b"abc".to_vec(), false), "held");
    let due = relays.next_deadline().unwrap();
    assert!(relays.expire(poll.registry(), due).is_empty());
    assert_eq!(read_now(&client), (Vec::new(), true), "passed on");
    assert!(relays.settle_end(poll.registry(), id, false).is_none());
}

/// A flow an older image handed with its bytes in a pipe (50,000 of
/// them, 9 delivered before), taken by `from_state`, and a dup of the
/// pipe's read end (`read_end`) or write end, kept to see the pipe from
/// outside: fds are not checked by number, which a test running beside
/// this one may reuse.
fn handed_in_a_pipe(read_end: bool) -> (Flow, OwnedFd, Vec<u8>) {
    let held = pattern(50_000, 7);
    let mut fds = [0; 2];
    // SAFETY: fds is valid for pipe2's two writes.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0);
    // SAFETY: pipe2 made both; each is taken once (the state, then
    // `from_state`, own them).
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    assert_eq!(nix::unistd::write(&w, &held).unwrap(), held.len());
    let kept = if read_end {
        r.try_clone()
    } else {
        w.try_clone()
    }
    .unwrap();
    let st = FlowState {
        spliced: true,
        pipe: Some((r.into_raw_fd(), w.into_raw_fd())),
        pending: held.len(),
        bytes: 9,
        ..FlowState::default()
    };
    (Flow::from_state(st).unwrap(), kept, held)
}

/// An older image handed a flow whose bytes in flight were in a pipe
/// (its fds crossed the exec): they are read into a buffer, both of the
/// pipe's fds are closed, and the next image is handed them as bytes.
#[test]
fn an_older_images_pipe_is_read_into_a_buffer_and_closed() {
    let (flow, read_end, held) = handed_in_a_pipe(true);
    assert_eq!(flow.pending(), held.len());
    // No writer left: EOF, not EAGAIN.
    let mut byte = [0u8; 1];
    assert_eq!(
        nix::unistd::read(&read_end, &mut byte),
        Ok(0),
        "the write end is open"
    );
    let again = flow.to_state();
    assert!(!again.spliced && again.pipe.is_none());
    assert!(again.held == held, "the pipe's bytes differ");
    assert_eq!((again.pending, again.bytes), (held.len(), 9));
    // No reader left: EPIPE.
    let (_, write_end, _) = handed_in_a_pipe(false);
    let wrote = nix::unistd::write(&write_end, b"x");
    assert_eq!(wrote, Err(nix::errno::Errno::EPIPE), "the read end is open");
}

/// An older image held up to 64 KiB, more than `HOLD`: nothing of it is
/// cut.
#[test]
fn an_older_images_full_buffer_is_handed_on_whole() {
    let held = pattern(64 * 1024, 3);
    let st = FlowState {
        pending: held.len(),
        held: held.clone(),
        ..FlowState::default()
    };
    let again = Flow::from_state(st).unwrap().to_state();
    assert!(again.held == held);
    assert_eq!(again.pending, 64 * 1024);
}

/// A Unix peer that passes fds: a read stops where a message carrying
/// them begins, short of the bytes queued behind it (atk8: a relay that
/// took a short read for an empty socket stopped there, 300-1,100 of
/// 400,000 bytes through, both sides waiting on each other). Every byte
/// still comes through (the fds are not relayed: the read drops them).
#[test]
fn bytes_after_a_message_carrying_fds_are_relayed() {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let (front, mut client) = tcp_pair();
    let (back, server) = unix_pair();
    let mut poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    relays
        .add(poll.registry(), Side::stream(front), Side::stream(back), ())
        .unwrap();
    let pairs = 2_000;
    let sender = thread::spawn(move || {
        let null = std::fs::File::open("/dev/null").unwrap();
        let fds = [null.as_raw_fd()];
        for _ in 0..pairs {
            let with_fd = [ControlMessage::ScmRights(&fds)];
            let chunk = [IoSlice::new(&[b'f'; 100])];
            sendmsg::<()>(
                server.as_raw_fd(),
                &chunk,
                &with_fd,
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            (&server).write_all(&[b'p'; 100]).unwrap();
        }
        server.shutdown(Shutdown::Write).unwrap();
        server
    });
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got.len()
    });
    let mut turns = 0;
    drive(&mut poll, &mut relays, |r, _| {
        turns += 1;
        r.iter().all(|(_, _, _, down)| down == pairs * 200) || turns > 1_000_000
    });
    let _server = sender.join().unwrap();
    let down: Vec<u64> = relays.iter().map(|(_, _, _, d)| d).collect();
    assert_eq!(down, [pairs * 200], "bytes relayed down");
    drop(relays);
    assert_eq!(reader.join().unwrap() as u64, pairs * 200);
}

/// A side handed over by an upgrade after its peer's reset keeps the
/// bound: the relay is closed `AFTER_RESET` after it is taken in, even
/// if the other side never closes.
#[test]
fn a_side_handed_over_after_its_reset_keeps_the_bound() {
    let (front, _client) = tcp_pair();
    let (back, _server) = tcp_pair();
    let state = |fd: OwnedFd, reset| SideState {
        fd: fd.into_raw_fd(),
        connecting: false,
        spliced: true,
        check: false,
        reset,
    };
    let poll = Poll::new().unwrap();
    let mut relays = Relays::default();
    let sides = [
        state(front, false).into_side(),
        state(back, true).into_side(),
    ];
    relays
        .adopt(poll.registry(), sides, Default::default(), ())
        .unwrap();
    assert!(relays.expire(poll.registry(), Instant::now()).is_empty());
    let later = Instant::now() + AFTER_RESET + Duration::from_millis(10);
    let closed = relays.expire(poll.registry(), later);
    assert_eq!(closed.len(), 1);
    assert!(matches!(
        closed[0].end,
        End::Failed {
            side: Which::Back,
            ..
        }
    ));
}
