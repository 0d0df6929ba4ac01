//! Prometheus metrics on `[daemon] metrics`: Debian's `promtool check
//! metrics` accepts the page without a warning, `curl` sees the counters
//! move after connections, a client that connects and sends nothing does
//! not delay another scrape, other paths are 404, a request that never
//! ends is refused, and a unix socket works too.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use crate::util::*;

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_string(), code.to_string())
}

fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn promtool_accepts_the_page_and_the_counters_move() {
    let (port, shut, mport) = (free_port(), free_port(), free_port());
    let s = Summond::start(&format!(
        "[daemon]\nmetrics = \"tcp://127.0.0.1:{mport}\"\n\
         [[service]]\nname = \"echo\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = [\"cat\"]\n\
         [[service]]\nname = \"shut\"\nlisten = \"tcp://127.0.0.1:{shut}\"\nexec = [\"cat\"]\ndeny = [\"127.0.0.0/8\"]\n"
    ));
    let url = format!("http://127.0.0.1:{mport}/metrics");
    let (before, code) = curl(&[&url]);
    assert_eq!(code, "200", "{before}");
    assert_eq!(
        value(&before, "summond_connections_total{service=\"echo\"}"),
        Some(0.0)
    );

    for i in 0..3 {
        let line = format!("{i}\n");
        assert_eq!(tcp_port_exchange(port, line.as_bytes()), line);
    }
    assert!(closed_at_once(shut));
    assert!(wait_until(TIMEOUT, || s.log_count("echo: pid ") == 3));
    let (page, _) = curl(&[&url]);
    assert_eq!(
        value(&page, "summond_connections_total{service=\"echo\"}"),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            "summond_child_exits_total{service=\"echo\",outcome=\"success\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &page,
            "summond_child_duration_seconds_count{service=\"echo\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &page,
            "summond_refused_total{service=\"shut\",reason=\"access\"}"
        ),
        Some(1.0)
    );
    assert!(value(&page, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    assert!(value(&page, "process_open_fds").is_some_and(|v| v >= 3.0));

    if std::path::Path::new("/usr/bin/promtool").exists() {
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}"
        );
    } else {
        skip(
            "promtool_accepts_the_page_and_the_counters_move",
            "promtool (package prometheus) is not installed",
        );
    }
}

#[test]
fn a_silent_client_delays_no_other_scrape_and_bad_requests_are_answered() {
    let mport = free_port();
    let dir = TempDir::new("metrics-unix");
    let sock = dir.path("m.sock");
    let _s = Summond::start_in(
        dir,
        Start {
            config: &format!("[daemon]\nmetrics = \"tcp://127.0.0.1:{mport}\"\n"),
            ..Start::default()
        },
    );
    // Connects, sends nothing, holds on.
    let silent: Vec<_> = (0..5)
        .map(|_| connect_tcp(([127, 0, 0, 1], mport).into()))
        .collect();
    let (page, code) = curl(&[&format!("http://127.0.0.1:{mport}/metrics")]);
    assert_eq!(code, "200", "{page}");
    // Answered while the silent clients are still held open (summond drops
    // them only at SCRAPE_TIMEOUT): the scrape waited for none of them.
    for c in &silent {
        c.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let still_open = matches!(
            std::io::Read::read(&mut &*c, &mut buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        assert!(
            still_open,
            "a silent client was dropped before the scrape was answered"
        );
    }
    let (_, code) = curl(&[&format!("http://127.0.0.1:{mport}/other")]);
    assert_eq!(code, "404");
    let (_, code) = curl(&["-X", "POST", &format!("http://127.0.0.1:{mport}/metrics")]);
    assert_eq!(code, "405");
    // A request head that never ends: refused once the buffer is full.
    let mut endless = connect_tcp(([127, 0, 0, 1], mport).into());
    let _ = endless.write_all(&[b'x'; 9000]);
    let mut answer = String::new();
    let _ = endless.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    drop(sock);
}

#[test]
fn metrics_over_a_unix_socket() {
    let dir = TempDir::new("metrics-unix");
    let sock = dir.path("m.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!("[daemon]\nmetrics = \"unix://{}\"\n", sock.display()),
            ..Start::default()
        },
    );
    let (page, code) = curl(&[
        "--unix-socket",
        sock.to_str().unwrap(),
        "http://localhost/metrics",
    ]);
    assert_eq!(code, "200");
    assert!(
        page.contains("# TYPE process_cpu_seconds_total counter"),
        "{page}"
    );
    drop(s);
}
