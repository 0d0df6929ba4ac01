//! Prometheus metrics on `[daemon] metrics`: the text exposition format
//! (version 0.0.4) rendered from a snapshot of the counters, summond's own
//! `process_*` figures from /proc/self, and the HTTP exchange a scraper
//! has with the event loop: one request of at most `MAX_REQUEST` bytes,
//! answered with `Connection: close`, never blocking (a slow or silent
//! scraper costs this buffer and is dropped at `SCRAPE_TIMEOUT`), then
//! a lingering close (shut down, drop what still comes, until EOF).
//! `GET /metrics` is the page, `GET /` the status page (`status_page.rs`,
//! from the same figures); any other path is 404.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::stats::{Exits, Histogram, Pause, Refusals, DURATION_BUCKETS};

/// The longest request head accepted; scrapers send a few hundred bytes.
pub const MAX_REQUEST: usize = 8192;
/// A scraper that has not sent its request and read the answer by then
/// is dropped.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answered scraper's further bytes are read and dropped
/// while waiting for it to close (a lingering close): closing with bytes
/// unread sends an RST, which can destroy the answer on its way.
pub const LINGER: Duration = Duration::from_secs(2);
/// At most this much is read and dropped while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// One service's figures at the moment of a scrape.
pub struct ServiceFigures<'a> {
    pub name: &'a str,
    /// `ServiceSpec::mode`: "accept/stdio", "internal", "disabled", …
    pub mode: &'static str,
    pub connections: u64,
    pub children: u64,
    pub refused: Refusals,
    pub spawn_failures: u64,
    pub exits: Exits,
    pub durations: &'a Histogram,
    /// Why it starts nothing now, if it is paused.
    pub paused: Option<Pause>,
    /// Forward mode: its backend.
    pub backend: Option<crate::control::BackendStatus>,
    /// How the last child ended, as status says it.
    pub last_exit: Option<&'a str>,
    /// `accept = false`: its children that sent READY=1.
    pub ready_children: Option<u64>,
    /// With `proxy_protocol`: balancers' health checks closed without a
    /// child.
    pub health_checks: Option<u64>,
}

/// summond's own process figures, read from /proc/self.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessFigures {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub start_time_seconds: f64,
}

impl ProcessFigures {
    /// Read /proc/self (stat, statm, fd) and /proc/stat's boot time.
    pub fn read() -> ProcessFigures {
        let tick = clock_ticks();
        let page = page_size();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the ")" that closes the command name: state is 0,
        // utime 11, stime 12, starttime 19.
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        let resident_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        ProcessFigures {
            cpu_seconds: (field(11) + field(12)) as f64 / tick,
            resident_bytes: resident_pages * page,
            open_fds,
            start_time_seconds: boot as f64 + field(19) as f64 / tick,
        }
    }
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One value per service: `NAME{service="…"} V`.
fn series(
    out: &mut String,
    (name, kind): (&str, &str),
    help: &str,
    services: &[ServiceFigures<'_>],
    value: impl Fn(&ServiceFigures<'_>) -> u64,
) {
    header(out, name, kind, help);
    for s in services {
        let _ = writeln!(out, "{name}{{service=\"{}\"}} {}", label(s.name), value(s));
    }
}

/// A counter per service and label value: `NAME{service="…",KEY="…"} V`.
fn labelled<'a, I: Iterator<Item = (&'static str, u64)>>(
    out: &mut String,
    name: &str,
    help: &str,
    services: &'a [ServiceFigures<'a>],
    key: &str,
    values: impl Fn(&'a ServiceFigures<'a>) -> I,
) {
    header(out, name, "counter", help);
    for s in services {
        let service = label(s.name);
        for (v, n) in values(s) {
            let _ = writeln!(out, "{name}{{service=\"{service}\",{key}=\"{v}\"}} {n}");
        }
    }
}

/// The page: every service's figures and summond's process figures.
pub fn render(services: &[ServiceFigures<'_>], process: &ProcessFigures) -> String {
    let mut out = String::with_capacity(512 + services.len() * 2048);
    series(
        &mut out,
        ("summond_connections_total", "counter"),
        "Children started (connections served in accept mode).",
        services,
        |s| s.connections,
    );
    series(
        &mut out,
        ("summond_children", "gauge"),
        "Children running now.",
        services,
        |s| s.children,
    );
    labelled(
        &mut out,
        "summond_refused_total",
        "Clients turned away, by reason.",
        services,
        "reason",
        |s| s.refused.iter().map(|(k, n)| (k.label(), n)),
    );
    series(
        &mut out,
        ("summond_spawn_failures_total", "counter"),
        "Children that could not be started (fork, pipe, exec).",
        services,
        |s| s.spawn_failures,
    );
    labelled(
        &mut out,
        "summond_child_exits_total",
        "Children that ended, by outcome.",
        services,
        "outcome",
        |s| s.exits.iter().map(|(k, n)| (k.label(), n)),
    );
    durations(&mut out, services);
    paused(&mut out, services);
    backends(&mut out, services);
    ready_children(&mut out, services);
    health_checks(&mut out, services);
    process_figures(&mut out, process);
    out
}

/// The run time histogram of each service, its buckets cumulative.
fn durations(out: &mut String, services: &[ServiceFigures<'_>]) {
    header(
        out,
        "summond_child_duration_seconds",
        "histogram",
        "How long children ran.",
    );
    for s in services {
        let name = label(s.name);
        let mut cumulative = 0;
        for (bound, n) in DURATION_BUCKETS.iter().zip(s.durations.buckets()) {
            cumulative += n;
            let _ = writeln!(
                out,
                "summond_child_duration_seconds_bucket{{service=\"{name}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "summond_child_duration_seconds_bucket{{service=\"{name}\",le=\"+Inf\"}} {}",
            s.durations.count()
        );
        let _ = writeln!(
            out,
            "summond_child_duration_seconds_sum{{service=\"{name}\"}} {}",
            s.durations.sum()
        );
        let _ = writeln!(
            out,
            "summond_child_duration_seconds_count{{service=\"{name}\"}} {}",
            s.durations.count()
        );
    }
}

/// Whether each service is paused, and why.
fn paused(out: &mut String, services: &[ServiceFigures<'_>]) {
    header(
        out,
        "summond_paused",
        "gauge",
        "1 while a service starts no child, with why (rate, crash_hold, resources, user: summond pause).",
    );
    for s in services {
        let (v, reason) = match &s.paused {
            Some(p) => (1, p.label()),
            None => (0, "none"),
        };
        let _ = writeln!(
            out,
            "summond_paused{{service=\"{}\",reason=\"{reason}\"}} {v}",
            label(s.name)
        );
    }
}

/// `accept = false` services: their children that said READY=1.
fn ready_children(out: &mut String, services: &[ServiceFigures<'_>]) {
    header(
        out,
        "summond_children_ready",
        "gauge",
        "accept = false: children that sent READY=1 to their NOTIFY_SOCKET.",
    );
    for s in services {
        if let Some(n) = s.ready_children {
            let _ = writeln!(
                out,
                "summond_children_ready{{service=\"{}\"}} {n}",
                label(s.name)
            );
        }
    }
}

/// Services with `proxy_protocol` or `tls`: the balancers' health checks
/// (a LOCAL or UNKNOWN header, or a TLS handshake, then a reset)
/// answered by closing: neither a connection served nor a client refused.
fn health_checks(out: &mut String, services: &[ServiceFigures<'_>]) {
    header(
        out,
        "summond_health_checks_total",
        "counter",
        "proxy_protocol or tls: balancers' health checks (a LOCAL or UNKNOWN header, or a TLS handshake, then a reset before a byte), closed without a child.",
    );
    for s in services {
        if let Some(n) = s.health_checks {
            let name = label(s.name);
            let _ = writeln!(out, "summond_health_checks_total{{service=\"{name}\"}} {n}");
        }
    }
}

/// Forward mode's backends: state, readiness time, relayed connections
/// and bytes (only services in forward mode have these series).
fn backends(out: &mut String, services: &[ServiceFigures<'_>]) {
    let with: Vec<(String, &crate::control::BackendStatus)> = services
        .iter()
        .filter_map(|s| Some((label(s.name), s.backend.as_ref()?)))
        .collect();
    header(
        out,
        "summond_backend_state",
        "gauge",
        "Forward mode: 1 for the backend's state now.",
    );
    for (name, b) in &with {
        for state in ["stopped", "starting", "ready", "stopping"] {
            let v = u8::from(b.state == state);
            let _ = writeln!(
                out,
                "summond_backend_state{{service=\"{name}\",state=\"{state}\"}} {v}"
            );
        }
    }
    header(
        out,
        "summond_backend_ready_seconds",
        "gauge",
        "Forward mode: how long the backend's last start took to become ready.",
    );
    for (name, b) in &with {
        if let Some(us) = b.ready_us {
            let _ = writeln!(
                out,
                "summond_backend_ready_seconds{{service=\"{name}\"}} {}",
                us as f64 / 1e6
            );
        }
    }
    header(
        out,
        "summond_relayed_connections_total",
        "counter",
        "Forward mode: connections relayed to the backend.",
    );
    for (name, b) in &with {
        let _ = writeln!(
            out,
            "summond_relayed_connections_total{{service=\"{name}\"}} {}",
            b.relayed
        );
    }
    header(
        out,
        "summond_relayed_bytes_total",
        "counter",
        "Forward mode: bytes relayed, up (client to backend) and down.",
    );
    for (name, b) in &with {
        let _ = writeln!(
            out,
            "summond_relayed_bytes_total{{service=\"{name}\",direction=\"up\"}} {}",
            b.bytes_up
        );
        let _ = writeln!(
            out,
            "summond_relayed_bytes_total{{service=\"{name}\",direction=\"down\"}} {}",
            b.bytes_down
        );
    }
}

/// summond's own process figures, under their standard names.
fn process_figures(out: &mut String, process: &ProcessFigures) {
    header(
        out,
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent in seconds.",
    );
    let _ = writeln!(out, "process_cpu_seconds_total {}", process.cpu_seconds);
    header(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    let _ = writeln!(
        out,
        "process_resident_memory_bytes {}",
        process.resident_bytes
    );
    header(
        out,
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
    );
    let _ = writeln!(out, "process_open_fds {}", process.open_fds);
    header(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    let _ = writeln!(
        out,
        "process_start_time_seconds {}",
        process.start_time_seconds
    );
}

/// What a scraper asked for, once its request head is complete.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// More bytes needed.
    Incomplete,
    Metrics,
    /// `/`: the status page.
    StatusPage,
    NotFound,
    /// Not a GET, or not HTTP, or too long: answered with this status.
    Bad(u16),
}

/// Look at the bytes received so far.
pub fn parse_request(buf: &[u8]) -> Request {
    // RFC 9112 2.2: empty lines before the request line are ignored.
    let head = skip_empty_lines(buf);
    // The head ends at its first empty line, CRLF or bare LF (a line
    // ending in LF, then CRLF or LF).
    let end = (0..head.len())
        .find(|&i| head[i] == b'\n' && matches!(&head[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]));
    let Some(end) = end else {
        return if buf.len() >= MAX_REQUEST {
            Request::Bad(431)
        } else {
            Request::Incomplete
        };
    };
    let head = String::from_utf8_lossy(&head[..end]);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad(400);
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad(400);
    }
    if method != "GET" && method != "HEAD" {
        return Request::Bad(405);
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => Request::Metrics,
        "/" => Request::StatusPage,
        _ => Request::NotFound,
    }
}

/// `buf` from its first byte that is not CR or LF.
fn skip_empty_lines(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    &buf[start..]
}

/// A full HTTP/1.1 response with `Connection: close`.
pub fn response(status: u16, body: &str) -> Vec<u8> {
    let kind = if status == 200 {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    response_with(status, kind, "", body)
}

/// The same with a Content-Type of its own and `headers` (each line
/// ending in CRLF).
pub fn response_with(status: u16, kind: &str, headers: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One scraper's exchange, driven by readiness events.
pub struct Scrape {
    pub socket: Socket,
    request: Vec<u8>,
    answer: Option<(Vec<u8>, usize)>,
    /// When it was accepted: the request of the oldest is the one
    /// incomplete longest.
    since: Instant,
    /// Answered and shut down for writing: bytes dropped so far while
    /// waiting for the client's EOF.
    lingering: Option<usize>,
    /// When its answer last went out further (set when it is given one).
    progress: Instant,
}

/// Which scrape a new one may replace at the cap, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evictable {
    /// Its request is still incomplete (since then): likely a slowloris.
    Asking(Instant),
    /// Answered, waiting for its EOF (since then).
    Lingering(Instant),
    /// Its answer is being written, and last went out further then: a
    /// client that does not read is the one stalled longest. A reading
    /// one is never that, unless every place is a reading client.
    Writing(Instant),
}

/// The head of an HTTP response: a HEAD request gets it alone (RFC 9110
/// 9.3.2), Content-Length still saying what GET would send.
fn head_only(mut response: Vec<u8>) -> Vec<u8> {
    if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(end + 4);
    }
    response
}

/// What a readiness event left the exchange as.
#[derive(Debug, PartialEq, Eq)]
pub enum ScrapeState {
    /// Waiting for more of the request or room to write.
    Waiting,
    /// The request is complete and names `Request`: render and `answer`.
    Asked(Request),
    /// The answer is out and the write side shut: it gets `LINGER` to
    /// close its end.
    Lingering,
    /// Answered or gone: close it.
    Done,
}

impl Scrape {
    pub fn new(socket: Socket) -> io::Result<Scrape> {
        socket.set_nonblocking(true)?;
        Ok(Scrape {
            socket,
            request: Vec::new(),
            answer: None,
            since: Instant::now(),
            lingering: None,
            progress: Instant::now(),
        })
    }

    /// How a new scraper may take this one's place at the cap. An answer
    /// being written comes last: when all 32 places hold clients that
    /// asked for a page bigger than the socket buffers and never read it
    /// (a few thousand services), a new scrape would otherwise wait in
    /// the backlog until their `SCRAPE_TIMEOUT`, again and again.
    pub fn evictable(&self) -> Evictable {
        match (&self.answer, self.lingering) {
            (None, _) => Evictable::Asking(self.since),
            (Some(_), Some(_)) => Evictable::Lingering(self.since),
            (Some(_), None) => Evictable::Writing(self.progress),
        }
    }

    /// Read what has arrived (at most MAX_REQUEST bytes in all), or write
    /// what is left of the answer, or drop what comes after it.
    pub fn on_ready(&mut self) -> ScrapeState {
        if self.lingering.is_some() {
            return self.drain();
        }
        if self.answer.is_some() {
            return self.write();
        }
        let mut buf = [0u8; 1024];
        loop {
            let room = MAX_REQUEST
                .saturating_sub(self.request.len())
                .min(buf.len());
            if room == 0 {
                return ScrapeState::Asked(parse_request(&self.request));
            }
            match (&self.socket).read(&mut buf[..room]) {
                Ok(0) => return ScrapeState::Done,
                Ok(n) => {
                    self.request.extend_from_slice(&buf[..n]);
                    match parse_request(&self.request) {
                        Request::Incomplete => {}
                        asked => return ScrapeState::Asked(asked),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ScrapeState::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ScrapeState::Done,
            }
        }
    }

    /// Start sending `bytes`; the rest goes out on later events.
    pub fn answer(&mut self, bytes: Vec<u8>) -> ScrapeState {
        let bytes = if skip_empty_lines(&self.request).starts_with(b"HEAD ") {
            head_only(bytes)
        } else {
            bytes
        };
        self.answer = Some((bytes, 0));
        self.progress = Instant::now();
        self.write()
    }

    fn write(&mut self) -> ScrapeState {
        let Some((bytes, sent)) = self.answer.as_mut() else {
            return ScrapeState::Done;
        };
        let before = *sent;
        while *sent < bytes.len() {
            match (&self.socket).write(&bytes[*sent..]) {
                Ok(0) => return ScrapeState::Done,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if *sent > before {
                        self.progress = Instant::now();
                    }
                    return ScrapeState::Waiting;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ScrapeState::Done,
            }
        }
        // All written: end our side with a FIN, and read until the
        // client's, so the close sends no RST.
        if self.socket.shutdown(std::net::Shutdown::Write).is_err() {
            return ScrapeState::Done;
        }
        self.lingering = Some(0);
        match self.drain() {
            ScrapeState::Waiting => ScrapeState::Lingering,
            done => done,
        }
    }

    /// Read and drop what the client sends after its request: Done at its
    /// EOF (or an error, or past `LINGER_BYTES`).
    fn drain(&mut self) -> ScrapeState {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(dropped) = self.lingering.as_mut() else {
                return ScrapeState::Done;
            };
            if *dropped > LINGER_BYTES {
                return ScrapeState::Done;
            }
            match (&self.socket).read(&mut buf) {
                Ok(0) => return ScrapeState::Done,
                Ok(n) => *dropped += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ScrapeState::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ScrapeState::Done,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_and_bounded() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Request::Incomplete
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\n\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n"),
            Request::StatusPage
        );
        assert_eq!(
            parse_request(b"GET /?x HTTP/1.1\r\n\r\n"),
            Request::StatusPage
        );
        assert_eq!(
            parse_request(b"GET /index.html HTTP/1.1\r\n\r\n"),
            Request::NotFound
        );
        assert_eq!(
            parse_request(b"DELETE / HTTP/1.1\r\n\r\n"),
            Request::Bad(405)
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::Bad(405)
        );
        assert_eq!(parse_request(b"hello\r\n\r\n"), Request::Bad(400));
        // Review of issue 15: a bare LF then CRLF ends the head too, and
        // empty lines before the request line are skipped.
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"\r\nGET /metrics HTTP/1.1\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(parse_request(b"\r\n\r\n"), Request::Incomplete);
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Request::Incomplete
        );
        assert_eq!(parse_request(&[b'a'; MAX_REQUEST]), Request::Bad(431));
    }

    #[test]
    fn the_page_has_help_type_and_cumulative_buckets() {
        let mut h = Histogram::default();
        for s in [0.001, 0.2, 0.2, 4000.0] {
            h.observe(s);
        }
        let figures = [ServiceFigures {
            name: "we\"ird",
            mode: "accept/stdio",
            connections: 3,
            children: 1,
            refused: [1, 0, 2, 5, 7, 4].into(),
            spawn_failures: 0,
            exits: [2, 1, 0, 0].into(),
            durations: &h,
            paused: Some(Pause::Rate {
                rate: crate::config::Rate {
                    count: 1,
                    per: Duration::from_secs(1),
                },
                next_token: Instant::now(),
            }),
            backend: None,
            last_exit: None,
            ready_children: None,
            health_checks: Some(4),
        }];
        let page = render(&figures, &ProcessFigures::default());
        assert!(page.contains("# TYPE summond_connections_total counter\n"));
        assert!(page.contains("summond_connections_total{service=\"we\\\"ird\"} 3\n"));
        assert!(page.contains(
            "summond_refused_total{service=\"we\\\"ird\",reason=\"per_source_rate\"} 2\n"
        ));
        assert!(page.contains("summond_refused_total{service=\"we\\\"ird\",reason=\"proxy\"} 5\n"));
        assert!(page.contains("summond_refused_total{service=\"we\\\"ird\",reason=\"tls\"} 7\n"));
        assert!(page
            .contains("summond_refused_total{service=\"we\\\"ird\",reason=\"backend_busy\"} 4\n"));
        assert!(page.contains("# TYPE summond_health_checks_total counter\n"));
        assert!(page.contains("summond_health_checks_total{service=\"we\\\"ird\"} 4\n"));
        assert!(page.contains("le=\"0.005\"} 1\n"));
        assert!(page.contains("le=\"0.5\"} 3\n"), "{page}");
        assert!(page.contains("le=\"1800\"} 3\n"));
        assert!(page.contains("le=\"+Inf\"} 4\n"));
        assert!(page.contains("summond_paused{service=\"we\\\"ird\",reason=\"rate\"} 1\n"));
    }

    #[test]
    fn a_head_answer_is_the_head_alone() {
        let full = response(200, "abc\n");
        let head = head_only(full.clone());
        assert!(head.ends_with(b"Content-Length: 4\r\nConnection: close\r\n\r\n"));
        assert_eq!(head.len() + 4, full.len());
    }

    #[test]
    fn process_figures_come_from_proc() {
        let p = ProcessFigures::read();
        assert!(
            p.resident_bytes > 0 && p.open_fds >= 3 && p.start_time_seconds > 1e9,
            "{p:?}"
        );
    }
}
