//! `tls`: summond does the handshake (rustls) and the child gets the
//! plaintext over a socket pair. Real clients (openssl s_client, curl),
//! real certificates made here with `openssl req` / `openssl x509`: a CA,
//! a server certificate for localhost and 127.0.0.1, a client one.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and what it signed, in `dir`.
pub(crate) struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Pki {
        run(
            dir,
            &[
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=summond test CA",
            ],
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        let pki = Pki { dir: dir.into() };
        pki.issue("server", "/CN=localhost", Some("server.ext"));
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        pki.issue(
            "client",
            "/C=DE/O=Acme, Inc/CN=client one",
            Some("client.ext"),
        );
        pki
    }

    /// NAME.key and NAME.pem, signed by the CA.
    fn issue(&self, name: &str, subject: &str, ext: Option<&str>) {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        run(
            &self.dir,
            &[
                "openssl",
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                subject,
            ],
        );
        let mut args = vec![
            "openssl",
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
        ];
        if let Some(e) = ext {
            args.extend(["-extfile", e]);
        }
        run(&self.dir, &args);
        std::fs::set_permissions(
            self.dir.join(&key),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// `openssl s_client` to `port` with `extra` arguments, `input` on its
/// stdin: its exit status and what it printed (stdout and stderr).
pub(crate) fn s_client(pki: &Pki, port: u16, extra: &[&str], input: &[u8]) -> (bool, String) {
    let mut args = vec!["-quiet"];
    args.extend(extra);
    s_client_with(pki, port, &args, input)
}

/// `s_client` without `-quiet`: it prints the certificates and the
/// session.
fn s_client_with(pki: &Pki, port: u16, extra: &[&str], input: &[u8]) -> (bool, String) {
    let connect = format!("127.0.0.1:{port}");
    let ca = pki.path("ca.pem");
    let mut child = Command::new("timeout")
        .args([
            "20", "openssl", "s_client", "-connect", &connect, "-CAfile", &ca,
        ])
        .args(["-servername", "localhost", "-verify_return_error"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

pub(crate) fn tls_service(port: u16, exec: &str, pki: &Pki, more: &str) -> String {
    format!(
        "[[service]]\nname = \"t\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {exec}\n\
         tls = {{ cert = \"{}\", key = \"{}\"{more} }}\n",
        pki.path("server.pem"),
        pki.path("server.key"),
    )
}

pub(crate) fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            skip(test, &format!("{t} is not installed"));
            return false;
        }
    }
    true
}

/// A fresh PKI in a directory of its own, or None (the test skipped,
/// saying so) if one of `tools` is missing.
pub(crate) fn pki_or_skip(test: &str, tools: &[&str]) -> Option<(TempDir, Pki)> {
    if !tools_or_skip(test, tools) {
        return None;
    }
    let certs = TempDir::new("pki");
    let pki = Pki::new(&certs.0);
    Some((certs, pki))
}

/// A TLS service `t` on a port picked now, running `exec`, with a fresh
/// PKI: the setup most tests here share. summond, the PKI, the port, and
/// the PKI's directory (removed when dropped).
struct Tls(Summond, Pki, u16, TempDir);

impl Tls {
    /// None (the test skipped, saying so) if one of `tools` is missing.
    fn start(test: &str, tools: &[&str], exec: &str, more: &str) -> Option<Tls> {
        let (certs, pki) = pki_or_skip(test, tools)?;
        let port = free_port();
        let s = Summond::start(&tls_service(port, exec, &pki, more));
        Some(Tls(s, pki, port, certs))
    }
}

/// The child's variables, and one line echoed back from the client.
const SHOW_ENV: &str = "env | grep -E '^(SSL_|REMOTE_ADDR|TCPLOCALPORT)' | sort; head -n1";

#[test]
fn s_client_over_tls_1_2_and_1_3_reaches_a_child_that_sees_the_client_and_ssl_variables() {
    let Some(Tls(s, pki, port, _certs)) =
        Tls::start("tls_1_2_and_1_3", &["openssl"], &sh(SHOW_ENV), "")
    else {
        return;
    };
    for (flag, protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = s_client(&pki, port, &[flag], b"ping over tls\n");
        assert!(ok, "{flag}: {out}\n{}", s.log_text());
        assert!(out.contains(&format!("SSL_PROTOCOL={protocol}\n")), "{out}");
        assert!(out.contains("SSL_TLS_SNI=localhost\n"), "{out}");
        assert!(out.contains("SSL_CLIENT_VERIFY=NONE\n"), "{out}");
        assert!(out.contains("REMOTE_ADDR=127.0.0.1\n"), "{out}");
        assert!(out.contains(&format!("TCPLOCALPORT={port}\n")), "{out}");
        assert!(out.contains("ping over tls\n"), "the child's echo: {out}");
        let cipher = if protocol == "TLSv1.3" {
            "SSL_CIPHER=TLS_"
        } else {
            "SSL_CIPHER=ECDHE-ECDSA-"
        };
        assert!(out.contains(cipher), "{out}");
    }
}

#[test]
fn with_client_ca_a_client_certificate_is_required_and_its_subject_reaches_the_child() {
    let Some((_certs, pki)) = pki_or_skip("client_ca", &["openssl"]) else {
        return;
    };
    let port = free_port();
    let more = format!(", client_ca = \"{}\"", pki.path("ca.pem"));
    let s = Summond::start(&tls_service(port, &sh(SHOW_ENV), &pki, &more));
    for flag in ["-tls1_2", "-tls1_3"] {
        let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
        let args = [flag, "-cert", &cert, "-key", &key];
        let (ok, out) = s_client(&pki, port, &args, b"hi\n");
        assert!(ok, "{flag}: {out}\n{}", s.log_text());
        assert!(out.contains("SSL_CLIENT_VERIFY=SUCCESS\n"), "{out}");
        assert!(
            out.contains("SSL_CLIENT_S_DN=CN=client one,O=Acme\\, Inc,C=DE\n"),
            "{out}"
        );
        let (_, out) = s_client(&pki, port, &[flag], b"hi\n");
        assert!(
            !out.contains("SSL_PROTOCOL"),
            "no child without a certificate: {out}"
        );
    }
    assert!(
        s.wait_log("(tls: no valid client certificate)"),
        "{}",
        s.log_text()
    );
}

#[test]
fn curl_fetches_5_mb_byte_exact_from_busybox_httpd_behind_tls() {
    let Some((_certs, pki)) = pki_or_skip("curl_busybox", &["openssl", "curl", "busybox"]) else {
        return;
    };
    let www = TempDir::new("www");
    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.path("big.bin"), &body).unwrap();
    let port = free_port();
    let exec = format!(
        "[\"busybox\", \"httpd\", \"-i\", \"-h\", \"{}\"]",
        www.0.display()
    );
    let s = Summond::start(&tls_service(port, &exec, &pki, ""));
    let got = www.path("got.bin");
    let url = format!("https://127.0.0.1:{port}/big.bin");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "--cacert",
            &pki.path("ca.pem"),
            "-o",
        ])
        .arg(&got)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log_text()
    );
    assert!(std::fs::read(&got).unwrap() == body, "not byte-exact");
}

/// The serial number of the certificate summond serves now.
fn served_serial(pki: &Pki, port: u16) -> String {
    let (_, out) = s_client_with(pki, port, &[], b"");
    let start = out
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = out.find("-----END CERTIFICATE-----").expect("its end") + 25;
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin
        .take()
        .unwrap()
        .write_all(&out.as_bytes()[start..end])
        .unwrap();
    String::from_utf8(x509.wait_with_output().unwrap().stdout).unwrap()
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_and_a_broken_one_keeps_the_old() {
    let Some((certs, pki)) = pki_or_skip("renewal", &["openssl"]) else {
        return;
    };
    let port = free_port();
    let config = tls_service(port, "[\"true\"]", &pki, "");
    let s = Summond::start(&config);
    let first = served_serial(&pki, port);
    pki.issue("server", "/CN=localhost", Some("server.ext"));
    assert!(s.reload(&config), "{}", s.log_text());
    let renewed = served_serial(&pki, port);
    assert_ne!(first, renewed, "the renewed certificate is served");
    std::fs::write(certs.path("server.pem"), "not a certificate\n").unwrap();
    assert!(!s.reload(&config), "a broken file fails the reload");
    assert!(
        s.log_text().contains("holds no PEM certificate"),
        "{}",
        s.log_text()
    );
    assert_eq!(served_serial(&pki, port), renewed, "the old pair stays");
}

#[test]
fn a_plaintext_client_on_a_tls_port_is_refused_as_tls_and_starts_no_child() {
    let Some(Tls(s, _, port, _certs)) = Tls::start("plaintext", &["openssl"], "[\"true\"]", "")
    else {
        return;
    };
    let mut c = connect_tcp(([127, 0, 0, 1], port).into());
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reply = Vec::new();
    let _ = c.read_to_end(&mut reply);
    assert!(!reply.starts_with(b"HTTP"), "no plaintext answer");
    assert!(s.wait_log("(tls: not TLS)"), "{}", s.log_text());
    assert!(!s.log_text().contains("started pid"), "{}", s.log_text());
}

#[test]
fn a_stalled_handshake_is_closed_at_its_deadline_while_others_are_served() {
    let Some(Tls(s, pki, port, _certs)) =
        Tls::start("stalled", &["openssl"], &sh("echo served"), "")
    else {
        return;
    };
    // From 127.0.0.2, hellos cut short: summond waits for the rest. Past
    // 64 at once that client's next ones are refused; 127.0.0.1 is served.
    let silent: Vec<_> = (0..70)
        .map(|_| {
            let mut c = connect_from([127, 0, 0, 2], port);
            c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
            c
        })
        .collect();
    for _ in 0..3 {
        let (ok, out) = s_client(&pki, port, &[], b"");
        assert!(ok && out.contains("served"), "{out}");
    }
    assert!(
        s.wait_log("(tls: too many TLS handshakes at once from this client)"),
        "{}",
        s.log_text()
    );
    let mut first = &silent[0];
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).expect("closed, not left hanging");
    assert!(n < buf.len());
    assert!(
        s.wait_log("(tls: TLS handshake not done in time)"),
        "{}",
        s.log_text()
    );
}

pub(crate) fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn ten_thousand_failed_handshakes_leave_no_fd_or_memory_behind() {
    let Some((_certs, pki)) = pki_or_skip("failed_handshakes", &["openssl"]) else {
        return;
    };
    let (port, mport) = (free_port(), free_port());
    let config = format!(
        "[daemon]\nmetrics = \"tcp://127.0.0.1:{mport}\"\n{}",
        tls_service(port, "[\"true\"]", &pki, "")
    );
    let s = Summond::start_with(Start {
        config: &config,
        args: &["--log-level", "info"],
        ..Start::default()
    });
    // Refusals counted so far: each client has been dealt with.
    let refused = || {
        let page = tcp_port_exchange(mport, b"GET /metrics HTTP/1.0\r\n\r\n");
        page.lines()
            .find_map(|l| l.strip_prefix("summond_refused_total{service=\"t\",reason=\"tls\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let bad = |n: usize| {
        for i in 0..n {
            let mut c = connect_tcp(([127, 0, 0, 1], port).into());
            // Garbage, a hello cut short, or nothing at all.
            let _ = match i % 3 {
                0 => c.write_all(b"GET / HTTP/1.0\r\n\r\n"),
                1 => c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00]),
                _ => Ok(()),
            };
            if i % 3 == 0 {
                let mut sink = Vec::new();
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                let _ = c.read_to_end(&mut sink);
            }
        }
    };
    let fds = fd_count(s.pid());
    let settled = |n: u64| {
        wait_until(Duration::from_secs(30), || {
            refused() >= n && fd_count(s.pid()) <= fds
        })
    };
    bad(1000);
    assert!(
        settled(1000),
        "fds {fds} -> {}, {} refused",
        fd_count(s.pid()),
        refused()
    );
    let rss = rss_kib(s.pid());
    bad(9000);
    assert!(
        settled(10_000),
        "fds {fds} -> {}, {} refused",
        fd_count(s.pid()),
        refused()
    );
    let grown = rss_kib(s.pid()).saturating_sub(rss);
    assert!(
        grown < 1024,
        "RSS grew {grown} KiB over 9000 failed handshakes"
    );
    // And a real client is still served.
    let (ok, out) = s_client(&pki, port, &[], b"");
    assert!(ok, "{out}");
}

#[test]
fn the_key_never_reaches_the_child_neither_as_an_fd_nor_in_its_environment() {
    let Some((certs, pki)) = pki_or_skip("key_in_child", &["openssl"]) else {
        return;
    };
    let port = free_port();
    // What the child holds: its fds, whether fd 0 is a Unix socket (the
    // pair) or a TCP one, its environment.
    let script = "for f in /proc/$$/fd/*; do echo \"fd $f $(readlink $f)\"; done; \
                  ino=$(readlink /proc/$$/fd/0 | tr -dc 0-9); \
                  echo \"unix $(awk -v i=$ino '$7==i' /proc/net/unix | wc -l)\"; \
                  echo \"tcp $(awk -v i=$ino '$10==i' /proc/net/tcp | wc -l)\"; \
                  tr '\\0' '\\n' < /proc/$$/environ";
    let s = Summond::start(&tls_service(port, &sh(script), &pki, ""));
    let (ok, out) = s_client(&pki, port, &[], b"");
    assert!(ok, "{out}\n{}", s.log_text());
    let key = std::fs::read_to_string(certs.path("server.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(!out.contains(key_line), "key material in the child: {out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    assert!(
        !out.contains("server.key"),
        "the key file open in the child: {out}"
    );
    let fds: Vec<&str> = out.lines().filter(|l| l.starts_with("fd ")).collect();
    // 0 and 1 the pair's end, 2 summond's stderr, and the one ls-free
    // glob of the shell's own.
    for l in &fds {
        assert!(!l.contains(&pki.path("")), "a certificate file open: {l}");
    }
    assert!(out.contains("\nunix 1\n"), "fd 0 is the pair's end: {out}");
    assert!(
        out.contains("\ntcp 0\n"),
        "fd 0 is not the connection: {out}"
    );
}

#[test]
fn tls_files_that_cannot_be_used_are_config_errors_naming_the_file_and_line() {
    let Some((certs, pki)) = pki_or_skip("tls_config_errors", &["openssl"]) else {
        return;
    };
    let dir = TempDir::new("cfg");
    let check = |tls: &str| {
        let config = format!(
            "[[service]]\nname = \"t\"\nlisten = \"tcp://127.0.0.1:1\"\nexec = [\"true\"]\ntls = {tls}\n"
        );
        let path = dir.path("c.toml");
        std::fs::write(&path, config).unwrap();
        let (code, out, err) = run_to_exit(&["--check", "-c", path.to_str().unwrap()]);
        (code, out + &err)
    };
    let (srv, key, cli_key) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("client.key"),
    );
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{{ cert = \"{srv}\", key = \"{cli_key}\" }}"),
            "client.key does not fit its certificate",
        ),
        (
            format!("{{ cert = \"{key}\", key = \"{key}\" }}"),
            "server.key holds no PEM certificate",
        ),
        (
            format!("{{ cert = \"/nonexistent/x.pem\", key = \"{key}\" }}"),
            "cannot read /nonexistent/x.pem",
        ),
        (
            format!("{{ cert = \"{srv}\", key = \"{key}\", min_version = \"1.1\" }}"),
            "\"1.1\" is not one of \"1.2\", \"1.3\"",
        ),
        (format!("{{ cert = \"{srv}\" }}"), "needs key = \"PATH\""),
    ];
    for (tls, want) in &cases {
        let (code, out) = check(tls);
        assert_eq!(code, 2, "{tls}: {out}");
        assert!(out.contains(want), "{tls}: wanted {want:?} in {out}");
        assert!(out.contains("c.toml:5:"), "the line of tls: {out}");
    }
    // A key every user may read, and one in a directory another user can
    // write (a swap there would go unseen).
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (_, out) = check(&format!("{{ cert = \"{srv}\", key = \"{key}\" }}"));
    assert!(out.contains("readable by every user"), "{out}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(
        &certs.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let (_, out) = check(&format!("{{ cert = \"{srv}\", key = \"{key}\" }}"));
    assert!(out.contains("another user could swap the file"), "{out}");
    std::fs::set_permissions(
        &certs.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (code, out) = check(&format!("{{ cert = \"{srv}\", key = \"{key}\" }}"));
    assert_eq!(code, 0, "{out}");
    // Links in a directory another user holds, pointing at root's own
    // key: the resolved path is root's, the directory of the links is
    // not, and it is the one refused (root would have served the key).
    if !nix::unistd::geteuid().is_root() {
        return skip(
            "tls links in another user's directory",
            "needs root (chown)",
        );
    }
    let theirs = TempDir::new("theirs");
    std::os::unix::fs::symlink(&srv, theirs.path("cert.pem")).unwrap();
    std::os::unix::fs::symlink(&key, theirs.path("key.pem")).unwrap();
    nix::unistd::chown(&theirs.0, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let (code, out) = check(&format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        theirs.path("cert.pem").display(),
        theirs.path("key.pem").display()
    ));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&theirs.0.display().to_string()), "{out}");
}

#[test]
fn with_pass_listen_fds_the_child_gets_the_plaintext_as_fd_3() {
    let Some((_certs, pki)) = pki_or_skip("tls_listen_fds", &["openssl"]) else {
        return;
    };
    let port = free_port();
    let script = "echo \"fds=$LISTEN_FDS names=$LISTEN_FDNAMES $SSL_PROTOCOL\" >&3; \
                  head -n1 <&3 >&3";
    let config = tls_service(port, &sh(script), &pki, "")
        .replace("tls = {", "pass = \"listen_fds\"\ntls = {");
    let s = Summond::start(&config);
    let (ok, out) = s_client(&pki, port, &[], b"through fd 3\n");
    assert!(ok, "{out}\n{}", s.log_text());
    assert!(out.contains("fds=1 names=connection TLSv1.3\n"), "{out}");
    assert!(out.contains("through fd 3\n"), "{out}");
}

#[test]
fn a_client_that_never_closes_after_its_child_ended_is_let_go_within_the_linger() {
    let Some(Tls(s, pki, port, _certs)) =
        Tls::start("tls_linger", &["openssl", "python3"], &sh("echo bye"), "")
    else {
        return;
    };
    let base = fd_count(s.pid());
    // Handshake, then neither read nor close: the child's answer and the
    // close_notify wait in its socket.
    let client = "import socket, ssl, sys\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
                  s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), \
                  server_hostname='localhost')\n\
                  print('ready', flush=True)\n\
                  sys.stdin.read()\n";
    let mut py = Command::new("python3")
        .args(["-c", client, &port.to_string(), &pki.path("ca.pem")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop::new(py.id() as i32);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(py.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    assert!(
        wait_until(TIMEOUT, || s.log_count("exited") == 1),
        "{}",
        s.log_text()
    );
    assert!(fd_count(s.pid()) > base, "held while the child ran");
    assert!(
        wait_until(Duration::from_secs(30), || fd_count(s.pid()) <= base),
        "summond still holds the client: {} fds, {base} before",
        fd_count(s.pid())
    );
    assert!(
        py.try_wait().unwrap().is_none(),
        "the client is still there"
    );
    drop(py.stdin.take());
    let _ = py.wait();
}

#[test]
fn a_tls_connection_outlives_the_handshake_deadline() {
    let Some((_certs, pki)) = pki_or_skip("tls_long_lived", &["openssl"]) else {
        return;
    };
    let port = free_port();
    // Past the 10 s a handshake has: the deadline is the handshake's only.
    let s = Summond::start(&tls_service(port, &sh("sleep 12; echo late"), &pki, ""));
    let (ok, out) = s_client(&pki, port, &[], b"");
    assert!(ok && out.contains("late\n"), "{out}\n{}", s.log_text());
}

/// SPEC: "With PROXY protocol, the header comes first, then TLS". haproxy
/// (tcp mode, `send-proxy-v2` and `send-proxy`) in front of a TLS
/// service: the client's TLS passes through it untouched, summond reads
/// the header, then does the handshake, and the child sees the header's
/// client in REMOTE_* beside the SSL_* variables.
#[test]
fn behind_haproxy_send_proxy_the_header_comes_first_then_tls() {
    let Some((_certs, pki)) = pki_or_skip("proxy_then_tls", &["openssl", "curl"]) else {
        return;
    };
    let (v2_front, v1_front, port) = (free_port(), free_port(), free_port());
    let show = "read line; printf 'HTTP/1.0 200 OK\\r\\n\\r\\n'; \
                env | grep -E '^(SSL_PROTOCOL|REMOTE_ADDR|PROXY_ADDR|TCPLOCALPORT)=' | sort";
    let config = tls_service(port, &sh(show), &pki, "")
        + "proxy_protocol = \"any\"\nproxy_from = [\"127.0.0.1/32\"]\n";
    let s = Summond::start(&config);
    let haproxy_config = format!(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
         frontend f2\n  bind 127.0.0.1:{v2_front}\n  default_backend b2\n\
         frontend f1\n  bind 127.0.0.1:{v1_front}\n  default_backend b1\n\
         backend b2\n  server s 127.0.0.1:{port} send-proxy-v2\n\
         backend b1\n  server s 127.0.0.1:{port} send-proxy\n"
    );
    let Some(_h) = crate::proxy::haproxy(&haproxy_config, v1_front) else {
        skip("proxy_then_tls", "no haproxy");
        return;
    };
    for front in [v2_front, v1_front] {
        // From 127.0.0.2: haproxy's own address is 127.0.0.1.
        let url = format!("https://127.0.0.1:{front}/");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--interface", "127.0.0.2"])
            .args(["--cacert", &pki.path("ca.pem"), &url])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.log_text()
        );
        assert_eq!(field(&body, "REMOTE_ADDR"), Some("127.0.0.2"), "{body}");
        assert_eq!(field(&body, "PROXY_ADDR"), Some("127.0.0.1"), "{body}");
        let local = front.to_string();
        assert_eq!(field(&body, "TCPLOCALPORT"), Some(local.as_str()), "{body}");
        assert!(body.contains("SSL_PROTOCOL=TLSv1."), "{body}");
        // s_client through haproxy: the child's echo comes back over TLS.
        let (ok, out) = s_client(&pki, front, &["-tls1_2"], b"GET / HTTP/1.0\r\n\r\n");
        assert!(ok && out.contains("SSL_PROTOCOL=TLSv1.2\n"), "{out}");
    }
    // A client that skips haproxy sends TLS where a header is due: proxy.
    let (ok, _) = s_client(&pki, port, &[], b"x\n");
    assert!(!ok);
    let refused = "t: refused 127.0.0.1";
    let said = || {
        s.log_text()
            .lines()
            .any(|l| l.contains(refused) && l.contains("no PROXY header"))
    };
    assert!(wait_until(TIMEOUT, said), "{}", s.log_text());
}

/// A hello cut short: summond waits for the rest of it.
fn cut_hello(port: u16) -> std::net::TcpStream {
    let mut c = connect_from([127, 0, 0, 1], port);
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    c
}

/// Read until summond closes `c` (bounded).
fn until_closed(mut c: std::net::TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 256];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Handshakes `openssl s_time -new` completed in one second.
fn s_time(pki: &Pki, port: u16) -> u32 {
    let connect = format!("127.0.0.1:{port}");
    let out = Command::new("timeout")
        .args(["20", "openssl", "s_time", "-connect", &connect, "-new"])
        .args(["-time", "1", "-CAfile", &pki.path("ca.pem")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split_once(" connections in ").map(|(n, _)| n.trim()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Every way out of a handshake gives its client's count back: more than
/// HANDSHAKES_PER_SOURCE (64) of each (done, not TLS, closed midway), some
/// timed out, some whose service a reload removed; then the client holds
/// 63 handshakes and its 64th is still served, which it would not be had
/// one path left even one counted. Debug builds also check the counts
/// against the table at every change (summond would die on a mismatch).
#[test]
fn every_way_out_of_a_handshake_gives_its_clients_count_back() {
    let Some((_certs, pki)) = pki_or_skip("handshake_counts", &["openssl"]) else {
        return;
    };
    let (port, other) = (free_port(), free_port());
    let u = tls_service(other, &sh("echo served"), &pki, "").replace("\"t\"", "\"u\"");
    let s = Summond::start(&(tls_service(port, &sh("true"), &pki, "") + &u));
    let mut done = 0;
    for _ in 0..20 {
        if done > 70 {
            break;
        }
        done += s_time(&pki, port);
    }
    assert!(done > 70, "{done} handshakes done\n{}", s.log_text());
    for _ in 0..70 {
        let mut c = connect_from([127, 0, 0, 1], port);
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        until_closed(c);
        let c = cut_hello(port);
        c.shutdown(std::net::Shutdown::Both).unwrap();
        until_closed(c);
    }
    // Three left to time out (10 s), three whose service goes away.
    let late: Vec<_> = (0..3).map(|_| cut_hello(other)).collect();
    let orphans: Vec<_> = (0..3).map(|_| cut_hello(port)).collect();
    assert!(s.wait_log("(tls: closed during the TLS handshake)"));
    assert!(s.reload(&u), "{}", s.log_text());
    drop(orphans);
    late.into_iter().for_each(until_closed);
    assert!(s.wait_log("(tls: TLS handshake not done in time)"));
    let held: Vec<_> = (0..63).map(|_| cut_hello(other)).collect();
    let (ok, out) = s_client(&pki, other, &[], b"");
    assert!(ok && out.contains("served"), "{out}\n{}", s.log_text());
    assert_eq!(
        s.log_count("too many TLS handshakes"),
        0,
        "{}",
        s.log_text()
    );
    drop(held);
}

/// A handshake holds a place under max_instances, as a connection waiting
/// for its PROXY header does (both are steps of one table before
/// dispatch): with two stalled hellos at max_instances = 2, a third client
/// waits in the backlog and is served once one of them goes.
#[test]
fn handshakes_hold_a_place_under_max_instances() {
    let Some((certs, pki)) = pki_or_skip("handshakes_max_instances", &["openssl"]) else {
        return;
    };
    let port = free_port();
    let config = tls_service(port, &sh("echo served"), &pki, "") + "max_instances = 2\n";
    let s = Summond::start(&config);
    let stalled: Vec<_> = (0..2).map(|_| cut_hello(port)).collect();
    let third = std::thread::spawn({
        let pki_dir = certs.0.clone();
        move || {
            let pki = Pki { dir: pki_dir };
            s_client(&pki, port, &[], b"")
        }
    });
    assert!(wait_in_backlog(port, 1), "{}", s.log_text());
    drop(stalled);
    let (ok, out) = third.join().unwrap();
    assert!(ok && out.contains("served"), "{out}\n{}", s.log_text());
}

/// An upgrade carries a connection waiting for its PROXY header (the new
/// image reads the header, then does the handshake) and closes one in
/// its handshake (rustls's state does not cross an exec): it is not left
/// to its deadline.
#[test]
fn an_upgrade_carries_a_waiting_header_and_closes_a_handshake() {
    let Some((_certs, pki)) = pki_or_skip("upgrade_front", &["openssl"]) else {
        return;
    };
    let port = free_port();
    let config = tls_service(port, &sh("echo served"), &pki, "")
        + "proxy_protocol = \"v1\"\nproxy_from = [\"127.0.0.1/32\"]\n";
    let s = Summond::start(&config);
    let mut waiting = connect_from([127, 0, 0, 1], port);
    waiting.write_all(b"PROXY TCP4 203.0.113.7 ").unwrap();
    let mut handshaking = connect_from([127, 0, 0, 1], port);
    handshaking
        .write_all(b"PROXY TCP4 203.0.113.8 198.51.100.1 5000 443\r\n")
        .unwrap();
    handshaking
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    assert!(s.wait_log("t: waiting for the PROXY header of 127.0.0.1:"));
    assert!(wait_until(TIMEOUT, || s.log_text().contains("203.0.113.8")));
    s.signal(nix::libc::SIGUSR2);
    assert!(s.wait_log("upgraded in place"), "{}", s.log_text());
    handshaking
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let mut buf = [0u8; 16];
    match handshaking.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the handshake was not closed at the upgrade: {other:?}"),
    }
    // The new image reads the header from its start, then the handshake:
    // plaintext where TLS is due is refused as not TLS, for the header's
    // client.
    waiting
        .write_all(b"198.51.100.1 5000 443\r\nplain text\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = waiting.read_to_end(&mut out);
    let said = || {
        s.log_text()
            .lines()
            .any(|l| l.contains("refused 203.0.113.7:5000") && l.contains("tls: not TLS"))
    };
    assert!(wait_until(TIMEOUT, said), "{}", s.log_text());
    let (ok, _) = s_client(&pki, port, &[], b"");
    assert!(!ok, "a client without a header is refused");
}

/// A handshake in progress holds a place under `max_per_source`, as the
/// child it becomes will: a client with one silent handshake open has
/// its next connection refused, and cannot take every instance place.
#[test]
fn a_handshake_in_progress_counts_under_max_per_source() {
    let Some((_certs, pki)) = pki_or_skip("handshake max_per_source", &["openssl"]) else {
        return;
    };
    let port = free_port();
    let s = Summond::start(&format!(
        "{}max_instances = 8\nmax_per_source = 1\n",
        tls_service(port, &sh("echo served"), &pki, "")
    ));
    // The first bytes of a ClientHello, and no more: the handshake waits.
    let mut silent = connect_from([127, 0, 0, 2], port);
    silent.write_all(&[0x16, 0x03, 0x01]).unwrap();
    assert!(loop_turns(s.pid(), 3), "{}", s.log_text());
    let mut second = connect_from([127, 0, 0, 2], port);
    let _ = second.write_all(&[0x16, 0x03, 0x01]);
    assert!(
        s.wait_log("refused 127.0.0.2:"),
        "the second is refused:\n{}",
        s.log_text()
    );
    assert!(s.log_text().contains("max_per_source"), "{}", s.log_text());
    // Another client is served meanwhile.
    let (ok, out) = s_client(&pki, port, &[], b"");
    assert!(ok && out.contains("served"), "{out}\n{}", s.log_text());
}

/// summond started with mod_ssl's and PROXY's variables in its own
/// environment (a hostile or careless start script): a plain child and a
/// TLS child without `client_ca` must not believe a client certificate
/// was verified, nor see any other forged client variable; summond's own
/// `SSL_*` for the TLS child are set afresh.
#[test]
fn ssl_and_proxy_variables_summond_was_started_with_reach_no_child() {
    let Some((_certs, pki)) = pki_or_skip("inherited_ssl_env", &["openssl"]) else {
        return;
    };
    let (tls, plain) = (free_port(), free_port());
    // OpenSSL's SSL_CERT_FILE and SSL_CERT_DIR describe the host: they pass.
    let env = "env | grep -E '^(SSL_|PROXY_)' | grep -v '^SSL_CERT_' | sort; echo end";
    let config = format!(
        "{}[[service]]\nname = \"plain\"\nlisten = \"tcp://127.0.0.1:{plain}\"\nexec = {}\n",
        tls_service(tls, &sh(env), &pki, ""),
        sh(env)
    );
    let forged: &[(&str, &str)] = &[
        ("SSL_CLIENT_VERIFY", "SUCCESS"),
        ("SSL_CLIENT_S_DN", "CN=root"),
        ("SSL_PROTOCOL", "forged"),
        ("SSL_TLS_SNI", "forged"),
        ("PROXY_ADDR", "forged"),
        ("PROXY_UNIQUE_ID", "forged"),
    ];
    let s = Summond::start_with(Start {
        config: &config,
        env: forged,
        ..Start::default()
    });
    let out = tcp_port_exchange(plain, b"");
    assert_eq!(out, "end\n", "a plain child's SSL_/PROXY_ variables");
    let (ok, out) = s_client(&pki, tls, &[], b"");
    assert!(ok, "{out}\n{}", s.log_text());
    assert!(out.contains("SSL_CLIENT_VERIFY=NONE\n"), "{out}");
    assert!(out.contains("SSL_TLS_SNI=localhost\n"), "{out}");
    for bad in ["SUCCESS", "CN=root", "forged"] {
        assert!(!out.contains(bad), "{bad} reached the TLS child: {out}");
    }
}

/// Is `c` still open from summond's side (no EOF, no reset, nothing sent)?
pub(crate) fn still_held(c: &std::net::TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let held = matches!(c.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    c.set_nonblocking(false).unwrap();
    held
}

/// Four addresses × 32 silent handshakes on one TLS service (half the
/// 256 handshake places) leave another TLS service its room: it is
/// served while every silent connection is still held, not once they
/// time out.
#[test]
fn silent_handshakes_on_one_tls_service_do_not_park_another() {
    let Some((_certs, pki)) = pki_or_skip("handshake_share", &["openssl"]) else {
        return;
    };
    let (flooded, other) = (free_port(), free_port());
    let u = tls_service(other, &sh("echo served"), &pki, "").replace("\"t\"", "\"u\"");
    let s = Summond::start(&(tls_service(flooded, &sh("cat"), &pki, "") + &u));
    // Counted once the loop has turned: just after "serving", summond
    // may still hold the fd of its own /proc read (footprint::shed), and
    // a base one too high was never reached (under load: "10 fds", the
    // 128 held and let go at 3 s unseen).
    assert!(loop_turns(s.pid(), 1), "{}", s.log_text());
    let before = fd_count(s.pid());
    let silent: Vec<_> = (2..6)
        .flat_map(|last| (0..32).map(move |_| connect_from([127, 0, 0, last], flooded)))
        .collect();
    // Half the places at least are taken (its share, or all of them).
    assert!(
        wait_until(TIMEOUT, || fd_count(s.pid()) >= before + 128),
        "{} fds",
        fd_count(s.pid())
    );
    let (ok, out) = s_client(&pki, other, &[], b"");
    assert!(ok && out.contains("served"), "{out}\n{}", s.log_text());
    let held = silent.iter().filter(|c| still_held(c)).count();
    assert_eq!(
        held,
        silent.len(),
        "served only once silent ones were let go"
    );
}

/// One address holds at most 64 handshakes (`HANDSHAKES_PER_SOURCE`)
/// over all services: its silent connections past that are refused
/// (`tls`) at once, so alone it cannot fill the 256 places and park a
/// service; another address is served on the same service while the
/// attacker's 64 are still held. Its first 64 are all held, though four
/// TLS services share the places: with no one else waiting, one address
/// is not held to a part of a service's places (before, to 16, a
/// quarter of an equal share).
#[test]
fn one_address_cannot_fill_its_services_handshake_share() {
    let Some((_certs, pki)) = pki_or_skip("handshake_share_per_client", &["openssl"]) else {
        return;
    };
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let config: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            tls_service(*p, &sh("echo served"), &pki, "").replace("\"t\"", &format!("\"t{i}\""))
        })
        .collect();
    let s = Summond::start(&config);
    let silent: Vec<_> = (0..80)
        .map(|_| connect_from([127, 0, 0, 2], ports[0]))
        .collect();
    // 64 held, 16 refused (closed by summond).
    assert!(
        wait_until(TIMEOUT, || silent.iter().filter(|c| !still_held(c)).count()
            >= 16),
        "{}",
        s.log_text()
    );
    let (ok, out) = s_client(&pki, ports[0], &[], b"");
    assert!(ok && out.contains("served"), "{out}\n{}", s.log_text());
    let held = silent.iter().filter(|c| still_held(c)).count();
    assert_eq!(held, 64, "served only once silent ones were let go");
    assert!(
        s.log_text().contains("refused 127.0.0.2"),
        "{}",
        s.log_text()
    );
}

/// `openssl s_client` over TLS 1.3 taking commands on stdin (not
/// `-quiet`: its `k` and `K` lines send a KeyUpdate, `K` asking summond
/// for one back); its output gathered by a thread.
struct Interactive {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Interactive {
    fn start(pki: &Pki, port: u16) -> Interactive {
        let mut child = Command::new("timeout")
            .args(["60", "openssl", "s_client", "-tls1_3"])
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .args(["-CAfile", &pki.path("ca.pem"), "-servername", "localhost"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl s_client");
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        // stdout has the child's bytes, stderr s_client's KEYUPDATE lines.
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for mut from in [stdout, stderr] {
            let sink = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Interactive { child, out }
    }

    /// One command or line, read by s_client on its own; false once it
    /// is gone.
    fn send(&mut self, line: &str) -> bool {
        std::thread::sleep(Duration::from_millis(3));
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).is_ok() && stdin.flush().is_ok()
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS 1.3 client sending KeyUpdate after KeyUpdate: with no data
/// between them, rustls ends the connection at its bound (32, as
/// BoringSSL), and summond closes it; with a line of data between each
/// (which resets that bound) every line is served, and summond's CPU for
/// the whole storm stays within a generous bound (no spin on a record
/// that carries no data).
#[test]
fn a_key_update_storm_is_closed_or_served_without_spinning() {
    let Some(Tls(s, pki, port, _certs)) =
        Tls::start("key_update_storm", &["openssl"], "[\"cat\"]", "")
    else {
        return;
    };
    let mut storm = Interactive::start(&pki, port);
    assert!(storm.send("hello\n"));
    assert!(wait_until(TIMEOUT, || storm.output().contains("hello\n")));
    let sent = (0..500).take_while(|_| storm.send("k\n")).count();
    assert!(
        sent < 500,
        "500 KeyUpdates in a row were taken\n{}",
        s.log_text()
    );
    assert!(s.wait_log("exited with status 0"), "{}", s.log_text());
    // The same with data between: served, bounded.
    let before = cpu_ticks(s.pid());
    let mut talk = Interactive::start(&pki, port);
    for i in 0..300 {
        assert!(talk.send("K\n") && talk.send(&format!("line {i}\n")), "{i}");
    }
    assert!(
        wait_until(TIMEOUT, || talk.output().contains("line 299\n")),
        "{}\n{}",
        talk.output(),
        s.log_text()
    );
    let ticks = cpu_ticks(s.pid()) - before;
    // 300 KeyUpdates each way and 300 lines cost microseconds each; a
    // second of CPU (100 ticks) would be a loop spinning.
    assert!(ticks < 100, "{ticks} ticks for the storm");
    // s_client says KEYUPDATE on stderr for each `K` it read on its own
    // (a few may share a read with their line, and are not commands).
    let updates = || talk.output().matches("KEYUPDATE").count();
    assert!(
        wait_until(TIMEOUT, || updates() >= 250),
        "{}",
        talk.output()
    );
}

/// A TLS 1.3 ClientHello as rustls's client writes it (with ring, as
/// summond's own provider: deprecated only for want of post-quantum).
#[allow(deprecated)]
pub(crate) fn client_hello() -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = "localhost".try_into().unwrap();
    let mut c = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    hello
}

/// Is `c` still open from summond's side, whatever it sent (read and
/// dropped)?
pub(crate) fn open_after_reading(mut c: &std::net::TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let open = loop {
        match c.read(&mut buf) {
            Ok(0) => break false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
            Err(_) => break false,
        }
    };
    c.set_nonblocking(false).unwrap();
    open
}

/// A connection that sends no ClientHello is let go before one that sent
/// its hello and stalled after it (its certificate and Finished are given
/// the rest of the 10 s): a silent client holds a handshake place a
/// short while only.
#[test]
fn a_client_silent_before_its_hello_goes_before_one_stalled_after_it() {
    let Some(Tls(s, _, port, _certs)) =
        Tls::start("hello_deadline", &["openssl"], &sh("echo served"), "")
    else {
        return;
    };
    // Two addresses: each refusal has its own log line.
    let mut stalled = connect_from([127, 0, 0, 2], port);
    stalled.write_all(&client_hello()).unwrap();
    let silent = connect_from([127, 0, 0, 3], port);
    until_closed(silent);
    assert!(
        open_after_reading(&stalled),
        "the stalled handshake went first\n{}",
        s.log_text()
    );
    until_closed(stalled);
    assert_eq!(
        s.log_count("(tls: TLS handshake not done in time)"),
        2,
        "{}",
        s.log_text()
    );
}

/// The clients of a TLS service and of one with `proxy_protocol` speak
/// first: their listeners have TCP_DEFER_ACCEPT (a silent peer waits in
/// the kernel, not in a handshake place or the header table), a plain
/// one has none, and a reload that turns `tls` off and `proxy_protocol`
/// on moves it from one listener to the other.
#[test]
fn tls_and_proxy_listeners_defer_accept_and_a_reload_moves_it() {
    let Some((_certs, pki)) = pki_or_skip("defer_accept", &["openssl"]) else {
        return;
    };
    let (tls, plain) = (free_port(), free_port());
    let plain_service = |more: &str| {
        format!(
            "[[service]]\nname = \"p\"\nlisten = \"tcp://127.0.0.1:{plain}\"\nexec = {}\n{more}",
            sh("echo plain")
        )
    };
    let s = Summond::start(&(tls_service(tls, &sh("echo served"), &pki, "") + &plain_service("")));
    assert_eq!(listener_defer_accept(s.pid(), tls), Some(1));
    assert_eq!(listener_defer_accept(s.pid(), plain), Some(0));
    let (ok, out) = s_client(&pki, tls, &[], b"");
    assert!(ok && out.contains("served"), "{out}\n{}", s.log_text());

    let untls = format!(
        "[[service]]\nname = \"t\"\nlisten = \"tcp://127.0.0.1:{tls}\"\nexec = {}\n",
        sh("echo served")
    );
    let proxied = "proxy_protocol = \"v1\"\nproxy_from = [\"127.0.0.0/8\"]\n";
    assert!(
        s.reload(&(untls + &plain_service(proxied))),
        "{}",
        s.log_text()
    );
    assert_eq!(listener_defer_accept(s.pid(), tls), Some(0));
    assert_eq!(listener_defer_accept(s.pid(), plain), Some(1));
    assert_eq!(tcp_port_exchange(tls, b""), "served\n");
    let header = b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 80\r\n";
    assert_eq!(tcp_port_exchange(plain, header), "plain\n");
}

/// A client that connects and stays silent past the listener's
/// TCP_DEFER_ACCEPT second is still served (Linux accepts it once the
/// second is over, it is not dropped): a TLS client whose ClientHello
/// comes 1.5 s late gets its ServerHello, and a PROXY header that comes
/// as late starts its child.
#[test]
fn clients_that_speak_after_the_defer_second_are_served() {
    let Some((_certs, pki)) = pki_or_skip("defer_accept_late", &["openssl"]) else {
        return;
    };
    let (tls, proxied) = (free_port(), free_port());
    let proxy_service = format!(
        "[[service]]\nname = \"p\"\nlisten = \"tcp://127.0.0.1:{proxied}\"\nexec = {}\n\
         proxy_protocol = \"v1\"\nproxy_from = [\"127.0.0.0/8\"]\n",
        sh("echo plain")
    );
    let s = Summond::start(&(tls_service(tls, &sh("cat"), &pki, "") + &proxy_service));
    let mut late_tls = std::net::TcpStream::connect(("127.0.0.1", tls)).unwrap();
    let mut late_header = std::net::TcpStream::connect(("127.0.0.1", proxied)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    late_tls.write_all(&client_hello()).unwrap();
    late_header
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 80\r\n")
        .unwrap();
    late_tls.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut record = [0u8; 5];
    late_tls.read_exact(&mut record).unwrap();
    // A handshake record: the ServerHello.
    assert_eq!(record[0], 0x16, "{record:?}\n{}", s.log_text());
    late_header.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut out = String::new();
    late_header.read_to_string(&mut out).unwrap();
    assert_eq!(out, "plain\n", "{}", s.log_text());
}

/// A python `ssl` client that reads `port` to its end (suppress_ragged_eofs
/// off: a TCP close without `close_notify` raises SSLEOFError, "EOF
/// occurred in violation of protocol"), with `send` sent first: the
/// bytes it read, and `clean` (close_notify) or `truncated ...`.
fn read_to_end_py(pki: &Pki, port: u16, send: &str) -> (Vec<u8>, String) {
    let out = py_reader(pki, port, send).wait_with_output().unwrap();
    let end = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.stdout, end)
}

pub(crate) fn py_reader(pki: &Pki, port: u16, send: &str) -> std::process::Child {
    let client = "import socket, ssl, sys\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
                  raw = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=60)\n\
                  s = ctx.wrap_socket(raw, server_hostname='localhost', suppress_ragged_eofs=False)\n\
                  s.sendall(sys.argv[3].encode())\n\
                  out = sys.stdout.buffer\n\
                  try:\n\
                  \x20   while True:\n\
                  \x20       b = s.recv(65536)\n\
                  \x20       if not b:\n\
                  \x20           sys.stderr.write('clean'); break\n\
                  \x20       out.write(b); out.flush()\n\
                  except ssl.SSLEOFError as e:\n\
                  \x20   sys.stderr.write('truncated: %s' % e)\n";
    Command::new("python3")
        .args(["-c", client, &port.to_string(), &pki.path("ca.pem"), send])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A child that writes 300,000 bytes (past every socket buffer on the
/// way) and then dies by SIGKILL: its client reads every byte, then a
/// truncation (no close_notify), from python's ssl and from openssl
/// s_client alike; on main both took it as a clean end.
#[test]
fn a_tls_child_killed_by_a_signal_gives_its_client_every_byte_then_a_truncation() {
    let script = "yes 0123456789abcdef | head -c 300000; kill -9 $$";
    let Some(Tls(s, pki, port, _certs)) =
        Tls::start("tls_killed_child", &["openssl", "python3"], &sh(script), "")
    else {
        return;
    };
    let want = b"0123456789abcdef\n".repeat(300000 / 17 + 1)[..300000].to_vec();
    let (got, end) = read_to_end_py(&pki, port, "");
    assert!(
        got == want,
        "{} bytes of {}\n{}",
        got.len(),
        want.len(),
        s.log_text()
    );
    assert!(end.starts_with("truncated: "), "{end}\n{}", s.log_text());
    assert!(
        end.contains("EOF occurred in violation of protocol"),
        "{end}"
    );
    let (ok, out) = s_client(&pki, port, &[], b"");
    assert!(!ok && out.contains("unexpected eof while reading"), "{out}");
}

/// A TLS child that answers and exits without reading all its input
/// (atk7): its client, still sending, gets the whole answer and a clean
/// close_notify. summond goes on reading the client's bytes (and drops
/// them) once the child is gone: left unread, they made the close a RST,
/// and the kernel threw away the answer's tail still in summond's send
/// queue (on 08d73fb: 0.1-0.9 MB of 1 MB in about 1 run of 7).
#[test]
fn a_tls_child_that_exits_with_input_unread_still_gives_its_whole_answer() {
    let script = "read line; yes 0123456789abcdef | head -c 1000000";
    let Some(Tls(s, pki, port, _certs)) =
        Tls::start("tls_unread_input", &["openssl", "python3"], &sh(script), "")
    else {
        return;
    };
    // One thread, non-blocking: python's ssl is not to be read and
    // written from two threads at once. It sends for a second before it
    // reads, so that the answer's tail is still in summond's send queue
    // when the child is gone.
    let client = "import select, socket, ssl, sys, time\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
                  raw = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=30)\n\
                  s = ctx.wrap_socket(raw, server_hostname='localhost', suppress_ragged_eofs=False)\n\
                  s.setblocking(False)\n\
                  out = memoryview(b'go\\n' + b'x' * 2000000)\n\
                  got, end, t0 = 0, None, time.time()\n\
                  while end is None:\n\
                  \x20   reading = time.time() - t0 > 1\n\
                  \x20   select.select([s] if reading else [], [s] if out else [], [], 0.1)\n\
                  \x20   try:\n\
                  \x20       while out:\n\
                  \x20           out = out[s.send(out[:16384]):]\n\
                  \x20   except (ssl.SSLWantReadError, ssl.SSLWantWriteError):\n\
                  \x20       pass\n\
                  \x20   except OSError:\n\
                  \x20       out = None\n\
                  \x20   if not reading:\n\
                  \x20       continue\n\
                  \x20   try:\n\
                  \x20       while True:\n\
                  \x20           b = s.recv(65536)\n\
                  \x20           if not b:\n\
                  \x20               end = 'clean'; break\n\
                  \x20           got += len(b)\n\
                  \x20   except (ssl.SSLWantReadError, ssl.SSLWantWriteError):\n\
                  \x20       pass\n\
                  \x20   except (ssl.SSLError, OSError) as e:\n\
                  \x20       end = 'cut: %s' % e\n\
                  print(got, end)\n";
    for round in 0..2 {
        let out = Command::new("python3")
            .args(["-c", client, &port.to_string(), &pki.path("ca.pem")])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said.trim(),
            "1000000 clean",
            "round {round}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.log_text()
        );
    }
}

/// Today's ends, pinned: a child that exits, 0 or with a code of its
/// own (the program chose its end, as after an error page), gives its
/// client every byte and a clean close_notify.
#[test]
fn a_tls_child_that_exits_with_any_code_ends_with_close_notify() {
    let script = "read line; printf 'got %s\\n' \"$line\"; [ \"$line\" = ok ] || exit 3";
    let Some(Tls(s, pki, port, _certs)) =
        Tls::start("tls_exit_code", &["openssl", "python3"], &sh(script), "")
    else {
        return;
    };
    for (send, code) in [
        ("ok\n", "exited with status 0"),
        ("bad\n", "exited with status 3"),
    ] {
        let (got, end) = read_to_end_py(&pki, port, send);
        let want = format!("got {}", send);
        assert_eq!(String::from_utf8_lossy(&got), want);
        assert_eq!(end, "clean", "{}", s.log_text());
        assert!(s.wait_log(code), "{}", s.log_text());
    }
}

/// `max_runtime` cuts a TLS child: its client gets what it wrote, then
/// no close_notify, also when the child takes the SIGTERM and exits 0
/// (what it wrote then is delivered too); on main both ended clean.
#[test]
fn max_runtime_gives_a_tls_childs_client_a_truncation_even_after_a_clean_exit() {
    let Some((_certs, pki)) = pki_or_skip("tls_max_runtime_cut", &["openssl", "python3"]) else {
        return;
    };
    let (dies, exits) = (free_port(), free_port());
    let config = format!(
        "{}max_runtime = \"1s\"\n{}max_runtime = \"1s\"\n",
        tls_service(dies, &sh("printf start; sleep 60"), &pki, ""),
        tls_service(
            exits,
            &sh("trap 'printf bye; exit 0' TERM; printf start; sleep 60 & wait"),
            &pki,
            ""
        )
        .replace("name = \"t\"", "name = \"t2\"")
    );
    let s = Summond::start(&config);
    for (port, want) in [(dies, "start"), (exits, "startbye")] {
        let (got, end) = read_to_end_py(&pki, port, "");
        assert_eq!(String::from_utf8_lossy(&got), want, "{}", s.log_text());
        assert!(end.starts_with("truncated: "), "{end}\n{}", s.log_text());
    }
    assert!(
        wait_until(TIMEOUT, || s.log_count("ran past max_runtime") == 2),
        "{}",
        s.log_text()
    );
}

/// A child that closes its output and runs on holds its client's end
/// no longer than `END_WAIT` (1 s): the client gets every byte and a
/// clean close_notify while the child still runs (its exit status
/// cannot be known yet, and it ended its output itself).
#[test]
fn a_tls_child_that_closes_its_output_and_runs_on_gives_close_notify_within_the_bound() {
    let script = "printf done; exec >&- <&-; sleep 60";
    let Some(Tls(s, pki, port, _certs)) = Tls::start(
        "tls_closed_output",
        &["openssl", "python3"],
        &sh(script),
        "",
    ) else {
        return;
    };
    let (got, end) = read_to_end_py(&pki, port, "");
    assert_eq!(String::from_utf8_lossy(&got), "done", "{}", s.log_text());
    assert_eq!(end, "clean", "{}", s.log_text());
    assert!(s.wait_log("closed by both"), "{}", s.log_text());
    assert_eq!(s.log_count("exited"), 0, "{}", s.log_text());
}

/// `summond_health_checks_total` of service `t`, from the metrics on `port`.
pub(crate) fn tls_health_checks(port: u16) -> u64 {
    let page = tcp_port_exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n");
    page.lines()
        .find_map(|l| l.strip_prefix("summond_health_checks_total{service=\"t\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A python TLS client of `port` (trusting `ca`) that, once its
/// handshake is done, does `how`: "reset" (SO_LINGER 0, close: a reset
/// before a byte), "data-reset" (a line, then a reset), or "fin" (shuts
/// its side without close_notify, then prints what comes). For the
/// resets, summond (`pid`) is stopped while the client's Finished and
/// what follows it go out, so that it reads them all at once, as it
/// does from a client faster than its loop (openssl s_time).
pub(crate) fn tls_client_then(port: u16, ca: &str, how: &str, pid: i32) -> String {
    let client = "import os, signal, socket, ssl, struct, sys\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
                  c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
                  c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
                  how, pid = sys.argv[3], int(sys.argv[4])\n\
                  if how == 'fin':\n\
                  \x20   s = ctx.wrap_socket(c, server_hostname='localhost')\n\
                  \x20   socket.socket(fileno=socket.dup(s.fileno())).shutdown(socket.SHUT_WR)\n\
                  \x20   out = b''\n\
                  \x20   while True:\n\
                  \x20       b = s.recv(100)\n\
                  \x20       if not b: break\n\
                  \x20       out += b\n\
                  \x20   print(out.decode(), end='')\n\
                  \x20   sys.exit(0)\n\
                  inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()\n\
                  t = ctx.wrap_bio(inc, out, server_hostname='localhost')\n\
                  while True:\n\
                  \x20   try:\n\
                  \x20       t.do_handshake()\n\
                  \x20       break\n\
                  \x20   except ssl.SSLWantReadError:\n\
                  \x20       c.sendall(out.read())\n\
                  \x20       inc.write(c.recv(65536))\n\
                  if how == 'data-reset':\n\
                  \x20   t.write(b'sent before the reset\\n')\n\
                  os.kill(pid, signal.SIGSTOP)\n\
                  try:\n\
                  \x20   c.sendall(out.read())\n\
                  \x20   c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
                  \x20   c.close()\n\
                  finally:\n\
                  \x20   os.kill(pid, signal.SIGCONT)\n";
    let out = Command::new("python3")
        .args(["-c", client, &port.to_string(), ca, how, &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{how}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client that resets its connection once its handshake is done,
/// before a byte (a balancer's `check-ssl`, `openssl s_time`), is no one
/// to serve: no child is started, and it is counted as a health check.
/// Only a reset says so: a client that shuts its side (a FIN) may still
/// read, and gets the child's answer; one that sends data and then
/// resets gets a child.
#[test]
fn a_client_reset_right_after_its_handshake_starts_no_child_and_is_a_health_check() {
    let Some((certs, pki)) = pki_or_skip("tls_reset_after_handshake", &["openssl", "python3"])
    else {
        return;
    };
    let (port, metrics) = (free_port(), free_port());
    let runs = certs.path("runs");
    let script = format!(
        "echo run >> {}; head -c 100 >/dev/null; echo hello",
        runs.display()
    );
    let s = Summond::start(&format!(
        "{}[daemon]\nmetrics = \"tcp://127.0.0.1:{metrics}\"\n",
        tls_service(port, &sh(&script), &pki, "")
    ));
    let (ca, pid) = (pki.path("ca.pem"), s.pid());
    let started = || {
        std::fs::read_to_string(&runs)
            .map(|t| t.lines().count() as u64)
            .unwrap_or(0)
    };
    const N: u64 = 10;
    for _ in 0..N {
        tls_client_then(port, &ca, "reset", pid);
    }
    assert!(
        wait_until(TIMEOUT, || tls_health_checks(metrics) == N),
        "{} health checks, {} children\n{}",
        tls_health_checks(metrics),
        started(),
        s.log_text()
    );
    assert_eq!(tls_client_then(port, &ca, "fin", pid), "hello\n");
    tls_client_then(port, &ca, "data-reset", pid);
    assert!(
        wait_until(TIMEOUT, || started() == 2),
        "{} children\n{}",
        started(),
        s.log_text()
    );
    assert_eq!(tls_health_checks(metrics), N);
    assert!(!s.log_text().contains("refused"), "{}", s.log_text());
}

/// haproxy's `check-ssl` (a TLS handshake, then a reset) against a TLS
/// service: counted as health checks, not refused.
#[test]
fn haproxy_tls_health_checks_start_no_child() {
    let Some((certs, pki)) = pki_or_skip("haproxy_tls_checks", &["openssl", "haproxy"]) else {
        return;
    };
    let (port, metrics, front) = (free_port(), free_port(), free_port());
    let runs = certs.path("runs");
    let s = Summond::start(&format!(
        "{}[daemon]\nmetrics = \"tcp://127.0.0.1:{metrics}\"\n",
        tls_service(
            port,
            &sh(&format!("echo run >> {}", runs.display())),
            &pki,
            ""
        )
    ));
    let config = format!(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n  timeout check 5s\n\
         frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\n\
         backend b\n  server s 127.0.0.1:{port} check check-ssl verify none inter 50\n"
    );
    let Some(_h) = crate::proxy::haproxy(&config, front) else {
        return skip("haproxy_tls_checks", "haproxy did not start");
    };
    // Most: a check whose reset comes after summond read its Finished
    // gets a child, as any client would.
    assert!(
        wait_until(Duration::from_secs(30), || tls_health_checks(metrics) >= 20),
        "{} health checks\n{}",
        tls_health_checks(metrics),
        s.log_text()
    );
}

/// A client whose last data record and reset are both in the socket
/// when the relay reads it (a one-way sender that closes with the
/// server's session tickets unread, so its close is a reset) has that
/// data reach the child: the plaintext goes first, the reset is the
/// next read's (it was lost: the read that found the reset returned only
/// the error).
#[test]
fn data_with_a_reset_behind_it_reaches_the_child() {
    let Some((certs, pki)) = pki_or_skip("tls_data_then_reset", &["openssl", "python3"]) else {
        return;
    };
    let port = free_port();
    let got = certs.path("got");
    let s = Summond::start(&tls_service(
        port,
        &sh(&format!(
            "cat > {}.$$; mv {}.$$ {}",
            got.display(),
            got.display(),
            got.display()
        )),
        &pki,
        "",
    ));
    let client = "import os, signal, socket, ssl, struct, sys, time\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
                  c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
                  c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
                  t = ctx.wrap_socket(c, server_hostname='localhost')\n\
                  time.sleep(0.5)\n\
                  pid = int(sys.argv[3])\n\
                  os.kill(pid, signal.SIGSTOP)\n\
                  try:\n\
                  \x20   t.sendall(b'sent before the reset\\n')\n\
                  \x20   time.sleep(0.1)\n\
                  \x20   t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
                  \x20   t.close()\n\
                  \x20   time.sleep(0.1)\n\
                  finally:\n\
                  \x20   os.kill(pid, signal.SIGCONT)\n";
    let out = Command::new("python3")
        .args([
            "-c",
            client,
            &port.to_string(),
            &pki.path("ca.pem"),
            &s.pid().to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(TIMEOUT, || got.exists()),
        "no child finished\n{}",
        s.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(&got).unwrap(),
        "sent before the reset\n",
        "{}",
        s.log_text()
    );
}
