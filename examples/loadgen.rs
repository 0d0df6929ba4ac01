//! A load client for `benches/quick.sh`: `concurrency` threads connect to a
//! TCP address back to back for `seconds`, read each answer to EOF and
//! check it; prints one line of figures (connections/s, latency
//! percentiles from connect to first byte, errors).
//!
//!     cargo run --release --example loadgen -- 127.0.0.1:9000 16 3 hello
//!
//! The last argument is the expected answer's start (optional). With
//! `LOADGEN_PROXY=v1` or `v2` in the environment each connection first
//! sends a PROXY header naming a client of the balancer's (192.0.2.1),
//! as a balancer would (`benches/proxy.sh`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: loadgen ADDR CONCURRENCY SECONDS [EXPECT]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse().expect("ADDR is host:port");
    let concurrency: usize = args[1].parse().expect("CONCURRENCY is a number");
    let seconds: f64 = args[2].parse().expect("SECONDS is a number");
    let expect = args.get(3).cloned().unwrap_or_default();
    let proxy = std::env::var("LOADGEN_PROXY")
        .ok()
        .filter(|v| !v.is_empty());
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (expect, proxy) = (expect.clone(), proxy.clone());
            std::thread::spawn(move || run(addr, until, &expect, proxy.as_deref()))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    for w in workers {
        let (l, e) = w.join().expect("a worker panicked");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> u128 {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0, |d: &Duration| d.as_micros())
    };
    println!(
        "conns={} errors={errors} cps={:.0} p50_us={} p99_us={} max_us={}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        latencies.last().map_or(0, |d| d.as_micros())
    );
}

/// One worker: connections until `until`; latency to the first byte.
fn run(
    addr: SocketAddr,
    until: Instant,
    expect: &str,
    proxy: Option<&str>,
) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut buf = Vec::with_capacity(64);
    let mut header = Vec::with_capacity(128);
    // Bounded in count as well as time.
    for _ in 0..10_000_000u64 {
        if Instant::now() >= until {
            break;
        }
        let t = Instant::now();
        let answer = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            if let Some(version) = proxy {
                header.clear();
                // A client of the balancer's (TEST-NET-1, the port of
                // this connection): a header naming the connection's
                // own two ends is a health check's, which summond
                // holds for its next byte rather than serving at once.
                let port = s.local_addr()?.port();
                let client = SocketAddr::from(([192, 0, 2, 1], port));
                let addrs = Some((client, addr));
                match version {
                    "v1" => summond::proxy::encode_v1(addrs, &mut header),
                    _ => summond::proxy::encode_v2(addrs, &[], &mut header),
                }
                s.write_all(&header)?;
            }
            buf.clear();
            let mut first = [0u8; 1];
            s.read_exact(&mut first)?;
            let latency = t.elapsed();
            buf.push(first[0]);
            s.read_to_end(&mut buf)?;
            Ok(latency)
        });
        match answer {
            Ok(latency) if buf.starts_with(expect.as_bytes()) => latencies.push(latency),
            _ => errors += 1,
        }
    }
    (latencies, errors)
}
