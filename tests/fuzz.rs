//! A bounded mutation fuzzer over everything that reads user text: the
//! config parser (TOML → validated Config or located errors), listen
//! addresses and CIDR blocks, and the PROXY protocol header parser. Runs
//! in-process on stable Rust, so CI runs it on every change: no input may
//! panic or take more than a second of CPU, an address that parses must
//! print back to itself, and every config error must print as `PATH:...`. The importers are fed mutants of hand-made
//! inputs and of the import corpus (tests/import-corpus: the socket units,
//! inetd.conf entries and xinetd files Debian 12 ships).
//!
//! `cargo test` runs it for SUMMOND_FUZZ_SECS seconds (default 5); `.ci/run`
//! gives it longer in release mode. The seed is the time unless
//! SUMMOND_FUZZ_SEED is set; a failure prints the seed and the input.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use summond::access::Cidr;
use summond::addr::ListenAddr;
use summond::config::{parse, Host, DAEMON_KEYS, LISTEN_TABLE_KEYS, SERVICE_KEYS, TOP_KEYS};

/// xorshift64*: small, fast, and reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SEEDS: &[&str] = &[
    include_str!("../conf/summond.toml"),
    include_str!("../conf/examples/bc.toml"),
    include_str!("../conf/examples/gunicorn.toml"),
    "[daemon]\nmax_children = 10\ncontrol = \"/run/s.sock\"\n",
    "[[service]]\nname = \"a\"\nlisten = [\"tcp://[::1]:7\", \"udp://127.0.0.1:7\"]\nexec = [\"cat\", \"-u\"]\naccept = false\npass = \"listen_fds\"\nstderr = \"null\"\n",
    "[[service]]\nname = \"b\"\nlisten = \"unix://@x\"\nexec = [\"/bin/sh\", \"-c\", \"true\"]\nmax_per_source = 3\nmax_instances = 0x10\nenv = { A = \"1\" }\n",
    "[[service]]\nname = \"c\"\nlisten = \"tcp://0.0.0.0:1\"\nexec = [\"cat\"]\nallow = [\"10.0.0.0/8\", \"::ffff:1.2.3.4/120\"]\ndeny = [\"::/0\"]\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
];

/// Syntax and values; the key names come from config.rs itself.
const TOKENS: &[&str] = &[
    "[[service]]",
    "[service]",
    "[daemon]",
    "=",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    ".",
    "tcp://",
    "udp://",
    "unix://",
    "unixgram://",
    "unix://@",
    "127.0.0.1:",
    "[::1]:",
    "::ffff:",
    "/",
    "/128",
    "/33",
    "0",
    "-1",
    "65536",
    "99999999999999999999",
    "0x7fffffff",
    "0o777",
    "1e9",
    "inf",
    "nan",
    "true",
    "false",
    "1979-05-27T07:32:00Z",
    "\"0660\"",
    "é",
    "日本",
    "\u{10FFFF}",
    "\\u0000",
    "\\",
    "\t",
    "#",
    "LISTEN_FDS",
    "stdio",
    "listen_fds",
    "socket",
    "null",
];

/// Every key summond knows, plus one it does not.
fn keys() -> Vec<&'static str> {
    [
        SERVICE_KEYS,
        DAEMON_KEYS,
        TOP_KEYS,
        LISTEN_TABLE_KEYS,
        &["bogus"],
    ]
    .concat()
}

const STRINGS: &[&str] = &[
    "tcp://127.0.0.1:7007",
    "tcp://[::1]:7007",
    "tcp://[::]:80",
    "udp://127.0.0.1:53",
    "udp://[::1]:0",
    "unix:///tmp/fuzz.sock",
    "unixgram:///tmp/fuzz.sock",
    "unix://@fuzz",
    "unix://@",
    "unix://rel",
    "tcp://localhost:1",
    "tcp://1.2.3.4",
    "sctp://1.2.3.4:5",
    "10.0.0.0/8",
    "::1/128",
    "1.2.3.4/33",
    "::ffff:1.2.3.4/96",
    "0.0.0.0/0",
    "cat",
    "/bin/sh",
    "sh",
    "bin/sh",
    "/etc/passwd",
    "/nonexistent",
    "",
    "stdio",
    "listen_fds",
    "inherit",
    "socket",
    "null",
    "0660",
    "0777",
    "9999",
    "rw",
    "root",
    "nobody",
    "no-such-user",
    "nogroup",
    "a",
    "a b",
    "svc.1-x_y",
    "LISTEN_FDS",
    "REMOTE_ADDR",
    "é",
    "/tmp/\\u0000x",
    "x:y",
    // durations, rates, sizes, masks, internal services, formats, globs
    "5m",
    "0s",
    "5x",
    "500ms",
    "99999999999999d",
    "50/1s",
    "0/1s",
    "10/0s",
    "x/1s",
    "1/",
    "512M",
    "99999999999G",
    "4k",
    "infinity",
    "0022",
    "0999",
    "internal:echo",
    "internal:chargen",
    "internal:nope",
    "internal:",
    "json",
    "text",
    "/nonexistent/*.toml",
    "conf/examples/*.toml",
    "[",
    "**",
    "/tmp",
    "hello\\r\\n",
];

/// Keys of the inline tables some values are (`rlimits`, `per_source_prefix`).
const TABLE_KEYS: &[&str] = &[
    "nofile", "nproc", "as", "cpu", "core", "fsize", "data", "stack", "memlock", "v4", "v6",
    "nofiles",
];

const INTS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "1024",
    "4294967295",
    "4294967296",
    "0x10",
    "0o7",
    "0b1",
    "9223372036854775807",
    "-20",
    "19",
    "20",
    "33",
    "129",
];

fn value(rng: &mut Rng, depth: usize) -> String {
    match rng.below(if depth > 1 { 4 } else { 6 }) {
        0 | 1 => format!("\"{}\"", rng.pick(STRINGS)),
        2 => rng.pick(INTS).to_string(),
        3 => rng
            .pick(&["true", "false", "1.5", "1979-05-27"])
            .to_string(),
        4 => {
            let n = rng.below(4);
            let items: Vec<String> = (0..n).map(|_| value(rng, depth + 1)).collect();
            format!("[{}]", items.join(", "))
        }
        _ => {
            let n = rng.below(3);
            let items: Vec<String> = (0..n)
                .map(|i| {
                    let key = if rng.below(2) == 0 {
                        rng.pick(TABLE_KEYS).to_string()
                    } else {
                        format!("{}{i}", rng.pick(&keys()))
                    };
                    format!("{key} = {}", value(rng, depth + 1))
                })
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// Valid TOML made of our own keys and plausible or hostile values, so
/// the validator (not just the TOML lexer) sees most inputs.
fn generate(rng: &mut Rng) -> String {
    let mut out = String::new();
    if rng.below(3) == 0 {
        out.push_str("[daemon]\n");
        for key in DAEMON_KEYS {
            if rng.below(2) == 0 {
                out.push_str(&format!("{key} = {}\n", value(rng, 0)));
            }
        }
    }
    for s in 0..=rng.below(3) {
        out.push_str("[[service]]\n");
        let mut used = std::collections::HashSet::new();
        // mostly the three required keys, so deeper checks run
        for key in ["name", "listen", "exec"] {
            if rng.below(8) != 0 {
                used.insert(key);
                let v = match key {
                    "name" if rng.below(4) != 0 => format!("\"s{s}\""),
                    "exec" if rng.below(3) != 0 => {
                        let program = *rng.pick(&[
                            "cat",
                            "/bin/sh",
                            "sh",
                            "/nonexistent",
                            "internal:echo",
                            "internal:daytime",
                        ]);
                        format!("[\"{program}\"]")
                    }
                    _ => value(rng, 0),
                };
                out.push_str(&format!("{key} = {v}\n"));
            }
        }
        for _ in 0..rng.below(6) {
            let key = *rng.pick(&keys());
            if used.insert(key) {
                out.push_str(&format!("{key} = {}\n", value(rng, 0)));
            }
        }
    }
    out
}

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(6) {
            0 if !chars.is_empty() => {
                let end = (at + rng.below(16)).min(chars.len());
                chars.drain(at.min(end)..end);
            }
            1 => {
                let all: Vec<&str> = [TOKENS, &keys()].concat();
                let tok: Vec<char> = rng.pick(&all).chars().collect();
                chars.splice(at..at, tok);
            }
            2 if !chars.is_empty() => {
                let i = rng.below(chars.len());
                chars[i] = char::from_u32(rng.below(0x80) as u32).unwrap_or('x');
            }
            3 if !chars.is_empty() => {
                let start = rng.below(chars.len());
                let end = (start + rng.below(40)).min(chars.len());
                let copy: Vec<char> = chars[start..end].to_vec();
                chars.splice(at..at, copy);
            }
            4 => chars.truncate(at),
            _ => {
                let other: Vec<char> = rng.pick(SEEDS).chars().collect();
                let start = rng.below(other.len());
                let end = (start + rng.below(80)).min(other.len());
                chars.splice(at..at, other[start..end].iter().copied());
            }
        }
    }
    chars.into_iter().collect()
}

const IMPORTS: &[&str] = &[
    "daytime\tstream\ttcp\tnowait\troot\tinternal\n#<off># tftp\tdgram\tudp\twait\tnobody\t/usr/sbin/tcpd\t/usr/sbin/in.tftpd /srv/tftp\n127.0.0.1:9 stream tcp6 nowait.40.2 nobody:nogroup /bin/cat cat -u\n",
    "defaults\n{\n  only_from = 10.0.0.0 192.168.{1,2}\n  no_access = 10.9.0.0\n  per_source = 3\n  enabled = echo tcpmux\n  disabled = time\n  server = /x\n}\nservice echo\n{\n  port = 7\n  wait = yes\n  user = 65534\n  group = nogroup\n  groups = yes\n  flags = NAMEINARGS NOLIBWRAP IDONLY\n  server = /usr/sbin/tcpd\n  server_args = in.echod -n\n  only_from -= 10.0.0.0/8\n  only_from += localhost .example.com ::1 1.2.3.4/24\n  log_on_success += USERID\n  access_times = 2:00-9:00\n  rlimit_rss = 1K\n  nice = 99\n  nice = 1\n  libwrap = echod\n}\n",
    "defaults\n{\n  instances = 60\n  only_from = 10.0.0.0/8 host\n}\nservice git\n{\n  port = 9418\n  socket_type = stream\n  wait = no\n  server = /bin/cat\n  server_args = -u\n  cps = 25 30\n  flags = NODELAY IPv6 SENSOR\n  env = A=1 B=2\n  rlimit_as = 8M\n  only_from += 127.0.0.1\n}\nservice daytime\n{\n  type = INTERNAL\n  id = daytime-dgram\n  socket_type = dgram\n  wait = yes\n}\n",
];

const UNITS: &[&str] = &[
    "[Unit]\nDescription=x\n[Socket]\nListenStream=22\nListenStream=/run/%N.sock\nListenDatagram=127.0.0.1:53\nAccept=yes\nMaxConnections=64\nFileDescriptorName=ssh\nBindIPv6Only=both\nKeepAlive=yes\nTriggerLimitBurst=5\n[Install]\nWantedBy=sockets.target\n",
    "[Unit]\nConditionPathExists=|!/etc/x\n[Service]\nExecStart=-@/usr/sbin/sshd sshd -i \"-o x\" $A ${B}x $$ \\\n  '\\x41\\101 %p %t'\nStandardInput=socket\nUser=nobody\nEnvironment=A=1 \"B=2 3\"\nEnvironmentFile=-/nonexistent\nLimitNOFILE=1024:4096\nNoNewPrivileges=yes\nRuntimeMaxSec=30\nProtectSystem=strict\nRuntimeDirectory=a b/c\nRootDirectory=/\n",
];

/// The import corpus (tests/import-corpus: what Debian 12 ships) as
/// seeds: each file's text and, for a .socket unit, its service's.
fn corpus_seeds() -> Vec<(String, Option<String>)> {
    fn walk(dir: &Path, out: &mut Vec<(String, Option<String>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("copyright") {
                continue;
            } else if p.is_dir() {
                walk(&p, out);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                let base = name.trim_end_matches(".socket");
                let service = [format!("{base}.service"), format!("{base}@.service")]
                    .iter()
                    .find_map(|s| std::fs::read_to_string(p.with_file_name(s)).ok())
                    .filter(|_| name.ends_with(".socket"));
                out.push((text, service));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import-corpus");
    let mut out = Vec::new();
    for format in ["systemd", "inetd", "xinetd"] {
        walk(&root.join(format), &mut out);
    }
    out
}

/// The importers: no panic, and their output parses as TOML. `text` is
/// tried as a .socket unit with `service` (or a seed's) as its service,
/// as a service, as inetd.conf and as xinetd text.
fn check_import(text: &str, service: Option<&str>) -> Result<(), String> {
    use summond::import::{convert, convert_units, Format};
    // As a .socket unit, with the other text as its service.
    let units = catch_unwind(AssertUnwindSafe(|| {
        convert_units(Path::new("in.socket"), text, service.unwrap_or(UNITS[1]))
            .and_then(|_| convert_units(Path::new("in.socket"), UNITS[0], text))
    }))
    .map_err(|_| "import::convert_units panicked".to_string())?;
    if let Ok(toml) = &units {
        if let Err(e) = toml.parse::<toml::Table>() {
            return Err(format!("systemd import wrote invalid TOML ({e}):\n{toml}"));
        }
    }
    for format in [Format::Inetd, Format::Xinetd] {
        let out = catch_unwind(AssertUnwindSafe(|| {
            convert(Path::new("in.conf"), text, format)
        }))
        .map_err(|_| format!("import::convert ({format:?}) panicked"))?;
        match out {
            Ok(toml) => {
                if let Err(e) = toml.parse::<toml::Table>() {
                    return Err(format!(
                        "{format:?} import wrote invalid TOML ({e}):\n{toml}"
                    ));
                }
            }
            Err(errors) => {
                if errors.iter().any(|e| !e.to_string().starts_with("in.conf")) {
                    return Err(format!("an import error without its path: {errors:?}"));
                }
            }
        }
    }
    Ok(())
}

const REQUESTS: &[&str] = &[
    "GET /metrics HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Prometheus/2.42\r\nAccept: text/plain\r\n\r\n",
    "GET / HTTP/1.0\n\n",
    "HEAD /metrics?x=1 HTTP/1.1\r\n\r\n",
    "POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
];

fn rng_pick_request(rng: &mut Rng) -> &'static str {
    REQUESTS[rng.below(REQUESTS.len())]
}

/// The CPU time this thread has used: what an input costs, which a
/// loaded machine does not inflate the way it does the wall clock.
fn thread_cpu() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID");
    Duration::from(ts)
}

/// The metrics request parser: no panic, no slowness, and an answer
/// (complete or not) for every prefix of the input: `Incomplete` exactly
/// while no head has ended (and the prefix is below MAX_REQUEST), and
/// once a prefix is answered every longer one gets the same answer (the
/// listener answers on the first complete head).
fn check_request(bytes: &[u8]) -> Result<(), String> {
    use summond::metrics::{parse_request, Request, MAX_REQUEST};
    let started = thread_cpu();
    let answers = catch_unwind(AssertUnwindSafe(|| {
        (1..=bytes.len())
            .map(|n| parse_request(&bytes[..n]))
            .collect::<Vec<_>>()
    }))
    .map_err(|_| "metrics::parse_request panicked".to_string())?;
    if thread_cpu() - started > Duration::from_secs(1) {
        return Err("metrics::parse_request was slow".into());
    }
    let mut first: Option<&Request> = None;
    for (i, answer) in answers.iter().enumerate() {
        let prefix = &bytes[..=i];
        // Empty lines before the request line are skipped (RFC 9112
        // 2.2); the head ends at an LF followed by LF or CRLF.
        let start = prefix
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .unwrap_or(prefix.len());
        let head = &prefix[start..];
        let ended =
            head.windows(3).any(|w| w == b"\n\r\n") || head.windows(2).any(|w| w == b"\n\n");
        let want_incomplete = !ended && prefix.len() < MAX_REQUEST;
        if (*answer == Request::Incomplete) != want_incomplete {
            return Err(format!(
                "prefix of {} bytes (head ended: {ended}) answered {answer:?}",
                prefix.len()
            ));
        }
        if !want_incomplete && !ended && *answer != Request::Bad(431) {
            return Err(format!("an over-long head answered {answer:?}"));
        }
        match first {
            Some(f) if f != answer => {
                return Err(format!(
                    "answered {f:?}, then {answer:?} with {} bytes",
                    prefix.len()
                ))
            }
            None if *answer != Request::Incomplete => first = Some(answer),
            _ => {}
        }
    }
    Ok(())
}

/// Headers as balancers send them, for the PROXY header parser's seeds.
fn proxy_seeds() -> Vec<Vec<u8>> {
    use summond::proxy::{encode_v1, encode_v2};
    let (s4, d4) = (
        "203.0.113.7:51000".parse().unwrap(),
        "10.0.0.2:443".parse().unwrap(),
    );
    let (s6, d6) = (
        "[2001:db8::1]:4000".parse().unwrap(),
        "[2001:db8::2]:443".parse().unwrap(),
    );
    let mut seeds = vec![
        b"PROXY UNKNOWN\r\nhello".to_vec(),
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ::1 65535 0\r\n".to_vec(),
    ];
    for addrs in [Some((s4, d4)), Some((s6, d6)), None] {
        let mut v1 = Vec::new();
        encode_v1(addrs, &mut v1);
        let mut v2 = Vec::new();
        let tlvs: &[(u8, &[u8])] = &[(1, b"h2"), (2, b"example.com"), (5, b"id"), (0x20, &[1, 0])];
        encode_v2(addrs, tlvs, &mut v2);
        v2.extend_from_slice(b"GET /");
        seeds.extend([v1, v2]);
    }
    seeds
}

/// Bytes changed, inserted, removed or repeated at random places.
fn mutate_bytes(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if at < out.len() => out[at] = rng.next() as u8,
            1 => out.insert(at, *rng.pick(b"\r\n\0 P:.0129\xff\x21\x11")),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 if at < out.len() => out[at] ^= 1 << rng.below(8),
            _ => {
                let n = rng.below(300);
                let byte = rng.next() as u8;
                out.splice(at..at, std::iter::repeat_n(byte, n));
            }
        }
    }
    out
}

/// The PROXY header parser: no panic, no slowness; for every prefix of
/// the input an answer, `Incomplete` only below the size bounds, and once
/// a prefix is answered (done or bad) every longer one gets the same
/// answer, a `Done` never longer than the bytes seen or the bound. That
/// is what lets the loop read a header byte by byte, or again from the
/// start after an upgrade, and take exactly its length.
fn check_proxy(bytes: &[u8]) -> Result<(), String> {
    use summond::proxy::{parse, Parsed, Version, V1_MAX, V2_MAX};
    for version in [Version::V1, Version::V2, Version::Any] {
        let started = thread_cpu();
        let answers = catch_unwind(AssertUnwindSafe(|| {
            (0..=bytes.len().min(V2_MAX + 8))
                .map(|n| parse(&bytes[..n], version))
                .collect::<Vec<_>>()
        }))
        .map_err(|_| "proxy::parse panicked".to_string())?;
        if thread_cpu() - started > Duration::from_secs(1) {
            return Err("proxy::parse was slow".into());
        }
        let mut first: Option<&Parsed> = None;
        for (n, answer) in answers.iter().enumerate() {
            let bound = if bytes.first() == Some(&b'P') {
                V1_MAX
            } else {
                V2_MAX
            };
            match answer {
                Parsed::Incomplete if n >= bound => {
                    return Err(format!("{version:?}: Incomplete after {n} bytes"))
                }
                Parsed::Done(len, _) if *len > n || *len > bound || *len == 0 => {
                    return Err(format!("{version:?}: Done({len}) after {n} bytes"))
                }
                _ => {}
            }
            match first {
                Some(f) if f != answer => {
                    return Err(format!("{version:?}: {f:?}, then {answer:?} at {n} bytes"))
                }
                None if *answer != Parsed::Incomplete => first = Some(answer),
                _ => {}
            }
        }
    }
    Ok(())
}

/// How deep the inputs got: a fuzzer whose mutants all die in the TOML
/// lexer would say nothing about the validator.
#[derive(Default, Debug)]
struct Depth {
    valid: u64,
    syntax_errors: u64,
    semantic_errors: u64,
}

fn check_one(text: &str, host: &Host, depth: &mut Depth) -> Result<(), String> {
    let path = Path::new("fuzz.toml");
    let started = thread_cpu();
    let outcome = catch_unwind(AssertUnwindSafe(|| parse(path, text, host)))
        .map_err(|_| "config::parse panicked".to_string())?;
    let used = thread_cpu() - started;
    if used > Duration::from_secs(1) {
        return Err(format!("config::parse took {used:?} of CPU"));
    }
    match &outcome {
        Ok(_) => depth.valid += 1,
        Err(errors)
            if errors
                .0
                .iter()
                .any(|e| matches!(e.kind, summond::config::ErrorKind::Syntax(_))) =>
        {
            depth.syntax_errors += 1
        }
        Err(_) => depth.semantic_errors += 1,
    }
    if let Err(errors) = outcome {
        // The diagnostics drawing must hold for every span the checker
        // produces (multibyte text, spans at the end, empty lines).
        for color in [false, true] {
            let rendered = catch_unwind(AssertUnwindSafe(|| errors.render(color)))
                .map_err(|_| "ConfigErrors::render panicked".to_string())?;
            if !rendered.starts_with(&errors.0[0].to_string()) {
                return Err(format!(
                    "rendered errors lost their first line:\n{rendered}"
                ));
            }
        }
        for e in &errors.0 {
            let line = e.to_string();
            // The main file, or a drop-in `include` matched, names itself.
            let own = format!("{}:", e.path.display());
            if !line.starts_with(&own)
                || (e.path != path && !e.path.is_absolute() && !e.path.exists())
            {
                return Err(format!("error without its path: {line}"));
            }
        }
    }
    // Every short piece of the text as an address and as a CIDR.
    for piece in text.split(['"', '\n', ',', ' ', '[', ']']).take(64) {
        let addr = catch_unwind(|| ListenAddr::from_str(piece))
            .map_err(|_| format!("ListenAddr::from_str({piece:?}) panicked"))?;
        if let Ok(a) = addr {
            let back = ListenAddr::from_str(&a.to_string());
            if back.as_ref() != Ok(&a) {
                return Err(format!(
                    "{piece:?} parsed as {a} which reads back as {back:?}"
                ));
            }
        }
        catch_unwind(|| Cidr::from_str(piece).is_ok())
            .map_err(|_| format!("Cidr::from_str({piece:?}) panicked"))?;
    }
    Ok(())
}

#[test]
fn no_input_panics_or_hangs() {
    let secs: u64 = std::env::var("SUMMOND_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("SUMMOND_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let host = Host::current();
    // Quiet the default hook: a caught panic is reported below, once.
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    let mut corpus: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
    let mut depth = Depth::default();
    let proxy_seeds = proxy_seeds();
    // The importers' seeds: the hand-made ones and the Debian corpus.
    let mut imports: Vec<(String, Option<String>)> = [IMPORTS, UNITS]
        .concat()
        .iter()
        .map(|t| (t.to_string(), None))
        .collect();
    let seeded = imports.len();
    imports.extend(corpus_seeds());
    assert!(
        imports.len() > seeded + 100,
        "the import corpus was not found"
    );
    while Instant::now() < deadline {
        let input = match rng.below(4) {
            0 | 1 => generate(&mut rng),
            2 => {
                let generated = generate(&mut rng);
                mutate(&mut rng, &generated)
            }
            _ => {
                let base = rng.pick(&corpus).clone();
                mutate(&mut rng, &base)
            }
        };
        // Every eighth input also goes to the importers, as inetd.conf and
        // as xinetd text; what they write must be TOML that parses.
        if runs % 8 == 4 {
            let (base, service) = &imports[rng.below(imports.len())];
            let text = mutate(&mut rng, base).replace("include", "xnclude");
            if let Err(why) = check_import(&text, service.as_deref()) {
                let _ = std::panic::take_hook();
                panic!("fuzz failure after {runs} runs (SUMMOND_FUZZ_SEED={seed}): {why}\ninput: {text:?}");
            }
        }
        // Every eighth input also goes to the metrics listener's request
        // parser, as the bytes a scraper (or anyone) might send.
        if runs % 8 == 0 {
            let base = rng_pick_request(&mut rng);
            let request = mutate(&mut rng, base);
            if let Err(why) = check_request(request.as_bytes()) {
                let _ = std::panic::take_hook();
                panic!("fuzz failure after {runs} runs (SUMMOND_FUZZ_SEED={seed}): {why}\ninput: {request:?}");
            }
        }
        // Every eighth input also goes to the PROXY header parser.
        if runs % 8 == 2 {
            let base = rng.pick(&proxy_seeds).clone();
            let header = mutate_bytes(&mut rng, &base);
            if let Err(why) = check_proxy(&header) {
                let _ = std::panic::take_hook();
                panic!("fuzz failure after {runs} runs (SUMMOND_FUZZ_SEED={seed}): {why}\ninput: {header:?}");
            }
        }
        if let Err(why) = check_one(&input, &host, &mut depth) {
            let _ = std::panic::take_hook();
            panic!("fuzz failure after {runs} runs (SUMMOND_FUZZ_SEED={seed}): {why}\ninput: {input:?}");
        }
        // Keep some survivors so mutations compound.
        if corpus.len() < 512 && rng.below(8) == 0 {
            corpus.push(input);
        }
        runs += 1;
    }
    let _ = std::panic::take_hook();
    eprintln!("fuzz: {runs} inputs in {secs} s, seed {seed}, no failure; {depth:?}");
    assert!(runs > 0);
    // Inputs reached every stage: some parsed, some failed in the TOML
    // reader, some in the validator (a run whose mutants all die in the
    // lexer has not tested the checks behind it).
    assert!(
        depth.valid > 0 && depth.syntax_errors > 0 && depth.semantic_errors > 0,
        "the fuzzer did not reach every stage (seed {seed}): {depth:?}"
    );
}
