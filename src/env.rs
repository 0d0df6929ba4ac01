//! The environment variables summond itself sets for a child: the
//! socket-activation ones (systemd's LISTEN_*, which summond may also have
//! been started with) and the ones describing a client (systemd's REMOTE_*,
//! ucspi-tcp's TCP*), with the families of client variables a child must
//! never inherit. Here, not in `spawn` or `config`, so both can know them
//! without knowing each other.

/// Variables of the socket-activation protocols that summond may itself
/// have been started with; a child must never inherit them (SPEC: "those
/// are removed, and set afresh only where this table says").
pub const ACTIVATION_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// The variables that describe an accepted client (systemd's and
/// ucspi-tcp's names).
pub const CONNECTION_ENV: &[&str] = &[
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_UID",
    "REMOTE_GID",
    "REMOTE_PID",
    "PROTO",
    "TCPREMOTEIP",
    "TCPREMOTEPORT",
    "TCPLOCALIP",
    "TCPLOCALPORT",
];

/// The families of variables that describe a client to a program started
/// by a super-server: systemd's `REMOTE_*`, ucspi-tcp's `TCPREMOTE*` and
/// `TCPLOCAL*` (and ucspi-tcp6's `TCP6*`), ucspi-unix's `UNIXREMOTE*` and
/// `UNIXLOCAL*`, s6's `IPCREMOTE*` and `IPCLOCAL*`, ucspi-ssl's `SSLREMOTE*`
/// and `SSLLOCAL*`, mod_ssl's `SSL_*`, and summond's `PROXY_*` (the PROXY
/// header's). summond sets only some of them; any other one inherited from
/// summond's own environment (`TCPREMOTEHOST=evil`) would reach every child
/// as if it described its client, so the whole family is removed, in every
/// mode, and a service can neither set nor pass one.
pub const CLIENT_ENV_PREFIXES: &[&str] = &[
    "REMOTE_",
    "TCPREMOTE",
    "TCPLOCAL",
    "TCP6REMOTE",
    "TCP6LOCAL",
    "UNIXREMOTE",
    "UNIXLOCAL",
    "IPCREMOTE",
    "IPCLOCAL",
    "SSLREMOTE",
    "SSLLOCAL",
    "SSL_",
    "PROXY_",
];

/// `SSL_*` names that configure OpenSSL for the host (its trust store)
/// rather than describe a client: inherited and configurable as usual.
const HOST_SSL_ENV: &[&str] = &["SSL_CERT_FILE", "SSL_CERT_DIR"];

/// A name of the client families (`CLIENT_ENV_PREFIXES`, and `PROTO`).
pub fn is_client_env(name: &str) -> bool {
    name == "PROTO"
        || (CLIENT_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
            && !HOST_SSL_ENV.contains(&name))
}

/// A variable summond itself sets for some child (rather than one of the
/// client families it only removes).
pub fn is_set_by_summond(name: &str) -> bool {
    ACTIVATION_ENV.contains(&name) || CONNECTION_ENV.contains(&name)
}

/// Every variable summond sets per child or that would describe a client:
/// removed from the inherited environment and refused in a service's
/// `env` and `passenv`.
pub fn is_reserved_env(name: &str) -> bool {
    is_set_by_summond(name) || is_client_env(name)
}

/// The variables summond sets for one child, as `NAME=value\0` strings in
/// one buffer that is cleared and reused, so a connection's variables cost
/// no allocation once the buffer has grown to fit them.
#[derive(Debug, Default)]
pub struct EnvBlock {
    bytes: Vec<u8>,
    starts: Vec<usize>,
}

impl EnvBlock {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.starts.clear();
    }

    /// Add `name=value`. Names are summond's own and values are numbers,
    /// addresses and config strings, none holding a NUL. Returns where
    /// the value lies, for `push_again`.
    pub fn push(&mut self, name: &str, value: impl EnvValue) -> Written {
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(b'=');
        let start = self.bytes.len();
        value.write_to(&mut self.bytes);
        let written = Written(start, self.bytes.len());
        self.bytes.push(0);
        written
    }

    /// Add `name=` with the value of an earlier variable (systemd's and
    /// ucspi-tcp's names for one address): copied, not written again.
    pub fn push_again(&mut self, name: &str, value: Written) {
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(b'=');
        self.bytes.extend_from_within(value.0..value.1);
        self.bytes.push(0);
    }

    /// Each string's address, NUL-terminated; valid until the next change.
    pub fn pointers(&self) -> impl Iterator<Item = *const std::ffi::c_char> + '_ {
        self.starts.iter().map(|s| self.bytes[*s..].as_ptr().cast())
    }

    /// The strings, for tests and logs.
    pub fn strings(&self) -> Vec<String> {
        self.starts
            .iter()
            .map(|s| {
                let rest = &self.bytes[*s..];
                let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
                String::from_utf8_lossy(&rest[..end]).into_owned()
            })
            .collect()
    }
}

/// Where `EnvBlock::push` wrote a value (a range of its bytes, valid
/// until the block is cleared).
#[derive(Clone, Copy, Debug)]
pub struct Written(usize, usize);

/// A variable's value as the child sees it. A connection's variables are
/// numbers and addresses written for every child, so they are written
/// digit by digit here rather than through `fmt` (its machinery was
/// about a fifth of summond's own user-space time per connection).
pub trait EnvValue {
    fn write_to(&self, out: &mut Vec<u8>);
}

impl EnvValue for &str {
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl EnvValue for String {
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

/// Digits pushed one by one: a call to memcpy for each of a
/// connection's fifteen or so numbers (octets, ports) cost more than the
/// digits themselves.
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.reserve(digits.len() - i);
    for d in &digits[i..] {
        out.push(*d);
    }
}

macro_rules! unsigned_env_value {
    ($($t:ty),*) => {$(
        impl EnvValue for $t {
            fn write_to(&self, out: &mut Vec<u8>) {
                write_decimal(out, u64::from(*self));
            }
        }
    )*};
}
unsigned_env_value!(u16, u32, u64);

/// An address's octets, four per address and three per connection: at
/// most three digits, without the general loop.
impl EnvValue for u8 {
    fn write_to(&self, out: &mut Vec<u8>) {
        let n = *self;
        if n >= 100 {
            out.push(b'0' + n / 100);
        }
        if n >= 10 {
            out.push(b'0' + n / 10 % 10);
        }
        out.push(b'0' + n % 10);
    }
}

impl EnvValue for usize {
    fn write_to(&self, out: &mut Vec<u8>) {
        write_decimal(out, *self as u64);
    }
}

impl EnvValue for i32 {
    fn write_to(&self, out: &mut Vec<u8>) {
        if *self < 0 {
            out.push(b'-');
        }
        write_decimal(out, u64::from(self.unsigned_abs()));
    }
}

impl EnvValue for std::net::IpAddr {
    fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    octet.write_to(out);
                }
            }
            // The shortest form (RFC 5952) is std's to get right.
            std::net::IpAddr::V6(v6) => {
                use std::io::Write;
                let _ = write!(out, "{v6}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_and_connection_vars_are_reserved() {
        for v in ACTIVATION_ENV.iter().chain(CONNECTION_ENV) {
            assert!(is_reserved_env(v));
        }
        assert!(!is_reserved_env("PATH"));
    }

    #[test]
    fn every_client_family_is_reserved_but_host_settings_are_not() {
        for v in [
            "TCPREMOTEHOST",
            "TCPREMOTEINFO",
            "TCPLOCALHOST",
            "TCP6REMOTEIP",
            "REMOTE_HOST",
            "REMOTE_USER",
            "PROTO",
            "UNIXREMOTEEUID",
            "IPCREMOTEPATH",
            "SSLREMOTEIP",
            "SSL_CLIENT_S_DN",
            "SSL_PROTOCOL",
            "PROXY_ADDR",
        ] {
            assert!(is_reserved_env(v), "{v}");
            assert!(is_client_env(v), "{v}");
        }
        for v in [
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "SSLKEYLOGFILE",
            "PROTOCOL",
            "TCP_KEEPALIVE",
            "HTTP_PROXY",
            "REMOTE",
            "TZ",
        ] {
            assert!(!is_reserved_env(v), "{v}");
        }
        assert!(is_set_by_summond("TCPREMOTEIP") && !is_set_by_summond("TCPREMOTEHOST"));
    }

    #[test]
    fn values_are_written_as_display_would() {
        use std::net::IpAddr;
        let mut env = EnvBlock::default();
        let ips = [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.3.40",
            "::1",
            "::ffff:10.1.2.3",
            "2001:db8::8:800:200c:417a",
            "fe80::1:0:0:1",
        ];
        for ip in ips {
            env.push("IP", ip.parse::<IpAddr>().unwrap());
        }
        for n in [0u16, 9, 10, 65535] {
            env.push("PORT", n);
        }
        for n in [0i32, -1, 42, i32::MIN, i32::MAX] {
            env.push("PID", n);
        }
        env.push("UID", u32::MAX);
        env.push("LISTEN_FDS", 3usize);
        env.push("LISTEN_FDNAMES", "a:b");
        env.push("NAMES", String::from("x"));
        let mut want: Vec<String> = ips.iter().map(|ip| format!("IP={ip}")).collect();
        want.extend(["PORT=0", "PORT=9", "PORT=10", "PORT=65535"].map(String::from));
        want.extend([0i32, -1, 42, i32::MIN, i32::MAX].map(|n| format!("PID={n}")));
        want.extend([format!("UID={}", u32::MAX), "LISTEN_FDS=3".into()]);
        want.extend(["LISTEN_FDNAMES=a:b".into(), "NAMES=x".to_string()]);
        assert_eq!(env.strings(), want);
        // Each string ends in its NUL where the next begins.
        let ptrs: Vec<_> = env.pointers().collect();
        assert_eq!(ptrs.len(), want.len());
    }

    #[test]
    fn every_octet_and_a_copied_value_read_as_display_would() {
        let mut env = EnvBlock::default();
        for n in 0..=u8::MAX {
            env.push("N", n);
        }
        let first = env.push("A", "x");
        let port = env.push("B", 8080u16);
        env.push_again("C", port);
        env.push_again("D", first);
        let mut want: Vec<String> = (0..=u8::MAX).map(|n| format!("N={n}")).collect();
        want.extend(["A=x", "B=8080", "C=8080", "D=x"].map(String::from));
        assert_eq!(env.strings(), want);
    }
}
