//! The backend and the client of `benches/relay.sh`, which measures relays
//! (summond's forward mode beside haproxy, systemd-socket-proxyd and
//! socat) between this client and this backend.
//!
//!     relaybench serve PORT          the backend, a thread per connection; the
//!                                    first byte says what the client wants:
//!                                    'u' + u64 LE: read that many bytes, answer the count (8 bytes LE)
//!                                    'd' + u64 LE: send that many bytes, close
//!                                    'p' 64-byte requests, each answered with 64
//!                                    'c' answer one byte, then read to EOF
//!     relaybench up ADDR BYTES       send BYTES; prints MB/s
//!     relaybench down ADDR BYTES     receive BYTES; prints MB/s
//!     relaybench rtt ADDR N          N 64-byte round trips; prints p50 and p99 in µs
//!     relaybench conns ADDR N C      N connections ('c'), C at a time; prints conns/s
//!     relaybench first ADDR          one connection ('c') to its first byte; prints ms
//!     relaybench startup PORT PROG…  start PROG, connect to PORT every 50 µs until it
//!                                    answers as to `first`; prints ms (the backend's
//!                                    own start time)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

const CHUNK: usize = 256 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_else(|| usage());
    match arg(1) {
        "serve" => serve(arg(2).parse().unwrap_or_else(|_| usage())),
        "up" => up(arg(2), num(arg(3))),
        "down" => down(arg(2), num(arg(3))),
        "rtt" => rtt(arg(2), num(arg(3)) as usize),
        "conns" => conns(arg(2), num(arg(3)) as usize, num(arg(4)) as usize),
        "first" => first(arg(2)),
        "startup" => startup(num(arg(2)) as u16, &args[3..]),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: relaybench serve PORT | up|down ADDR BYTES | rtt ADDR N | conns ADDR N C");
    std::process::exit(2)
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| usage())
}

fn serve(port: u16) {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve_one(conn);
        });
    }
}

fn serve_one(mut c: TcpStream) -> std::io::Result<()> {
    let _ = c.set_nodelay(true);
    let mut cmd = [0u8; 1];
    c.read_exact(&mut cmd)?;
    let mut buf = vec![0u8; CHUNK];
    match cmd[0] {
        b'u' => {
            // The length first: a relay that does not pass a half-close
            // on (systemd-socket-proxyd) is measured all the same.
            let mut len = [0u8; 8];
            c.read_exact(&mut len)?;
            let want = u64::from_le_bytes(len);
            let mut n = 0u64;
            while n < want {
                match c.read(&mut buf)? {
                    0 => break,
                    k => n += k as u64,
                }
            }
            c.write_all(&n.to_le_bytes())
        }
        b'd' => {
            let mut len = [0u8; 8];
            c.read_exact(&mut len)?;
            let mut left = u64::from_le_bytes(len);
            while left > 0 {
                let k = left.min(CHUNK as u64) as usize;
                c.write_all(&buf[..k])?;
                left -= k as u64;
            }
            Ok(())
        }
        b'p' => {
            let mut req = [0u8; 64];
            while c.read_exact(&mut req).is_ok() {
                c.write_all(&req)?;
            }
            Ok(())
        }
        b'c' => {
            c.write_all(b"k")?;
            while c.read(&mut buf)? > 0 {}
            Ok(())
        }
        _ => Ok(()),
    }
}

fn connect(addr: &str) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    let _ = c.set_nodelay(true);
    c
}

fn up(addr: &str, bytes: u64) {
    let mut c = connect(addr);
    let buf = vec![1u8; CHUNK];
    let start = Instant::now();
    c.write_all(b"u").unwrap();
    c.write_all(&bytes.to_le_bytes()).unwrap();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        c.write_all(&buf[..k]).unwrap();
        left -= k as u64;
    }
    let mut got = [0u8; 8];
    c.read_exact(&mut got).unwrap();
    assert_eq!(u64::from_le_bytes(got), bytes, "bytes lost on the way up");
    println!("{:.0}", bytes as f64 / start.elapsed().as_secs_f64() / 1e6);
}

fn down(addr: &str, bytes: u64) {
    let mut c = connect(addr);
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    c.write_all(b"d").unwrap();
    c.write_all(&bytes.to_le_bytes()).unwrap();
    let mut got = 0u64;
    loop {
        match c.read(&mut buf).unwrap() {
            0 => break,
            k => got += k as u64,
        }
    }
    assert_eq!(got, bytes, "bytes lost on the way down");
    println!("{:.0}", bytes as f64 / start.elapsed().as_secs_f64() / 1e6);
}

fn rtt(addr: &str, n: usize) {
    let mut c = connect(addr);
    c.write_all(b"p").unwrap();
    let mut req = [7u8; 64];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&req).unwrap();
        c.read_exact(&mut req).unwrap();
        times.push(t.elapsed().as_nanos() as u64);
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    println!("{:.1} {:.1}", at(0.5), at(0.99));
}

fn conns(addr: &str, n: usize, c: usize) {
    let start = Instant::now();
    let threads: Vec<_> = (0..c)
        .map(|i| {
            let addr = addr.to_string();
            let mine = n / c + usize::from(i < n % c);
            std::thread::spawn(move || {
                let mut one = [0u8; 1];
                for _ in 0..mine {
                    let mut s = connect(&addr);
                    s.write_all(b"c").unwrap();
                    s.read_exact(&mut one).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    println!("{:.0}", n as f64 / start.elapsed().as_secs_f64());
}

fn first(addr: &str) {
    let start = Instant::now();
    let mut s = connect(addr);
    s.write_all(b"c").unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    println!("{:.2}", start.elapsed().as_secs_f64() * 1e3);
}

fn startup(port: u16, argv: &[String]) {
    let (prog, rest) = argv.split_first().unwrap_or_else(|| usage());
    let start = Instant::now();
    let mut child = std::process::Command::new(prog)
        .args(rest)
        .spawn()
        .expect("spawn");
    // Until it answers a client as `first` asks it through the relay
    // (connect, 'c', its first byte back), so the two times differ only
    // by what the relay adds: a connect alone leaves out the backend's
    // accept and answer, which the client's wait through summond holds.
    let answer = loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_nodelay(true);
            let mut one = [0u8; 1];
            if s.write_all(b"c").is_ok() && s.read_exact(&mut one).is_ok() {
                break start.elapsed();
            }
        }
        assert!(start.elapsed().as_secs() < 30, "never listened");
        std::thread::sleep(std::time::Duration::from_micros(50));
    };
    println!("{:.2}", answer.as_secs_f64() * 1e3);
    let _ = child.kill();
    let _ = child.wait();
}
