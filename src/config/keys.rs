//! The keys each section of the services file accepts, and what each one
//! means: the checker, the fuzzer's grammar, the summond.toml(5) man page
//! and the JSON Schema editors check the file with (both written by
//! build.rs from `KEY_DOCS`; the schema reads each key's `value` through
//! `VALUE_WORDS`, config/schema.rs) share them, and tests hold
//! the lists, the documentation and the checker's handler of each
//! `[[service]]` key (service.rs) together, so a key cannot exist in one
//! and be missing from another. Plain data: build.rs includes this file.

/// The keys each section accepts (also the fuzzer's dictionary).
pub const TOP_KEYS: &[&str] = &["daemon", "service"];
pub const DAEMON_KEYS: &[&str] = &[
    "max_children",
    "control",
    "include",
    "log_format",
    "metrics",
];
pub const SERVICE_KEYS: &[&str] = &[
    "name",
    "listen",
    "exec",
    "accept",
    "pass",
    "stderr",
    "user",
    "group",
    "env",
    "max_instances",
    "max_per_source",
    "allow",
    "deny",
    "proxy_protocol",
    "proxy_from",
    "socket_mode",
    "socket_user",
    "socket_group",
    "socket_directory_mode",
    "clear_env",
    "passenv",
    "working_directory",
    "chroot",
    "umask",
    "nice",
    "rlimits",
    "no_new_privs",
    "supplementary_groups",
    "extra_groups",
    "runtime_directory",
    "runtime_directory_mode",
    "max_runtime",
    "instances",
    "start",
    "ready_timeout",
    "idle_timeout",
    "rate",
    "per_source_rate",
    "per_source_prefix",
    "banner",
    "banner_fail",
    "backlog",
    "v6only",
    "reuse_port",
    "keepalive",
    "nodelay",
    "freebind",
    "disabled",
    "forward",
    "ready",
    "start_timeout",
    "idle_stop",
    "stop_timeout",
    "forward_proxy_protocol",
    "tls",
];
pub const LISTEN_TABLE_KEYS: &[&str] = &["address", "name"];

/// The `[[service]]` keys without which a service is an error (their
/// documentation starts "Required", which the schema reads).
pub const REQUIRED_SERVICE_KEYS: &[&str] = &["name", "listen", "exec"];

/// One word of the notation `KeyDoc::value` is written in, and the JSON
/// Schema of a value it stands for. The rest of the notation is read by
/// config/schema.rs: `"a" | "b"` (one of these strings), `[X, ...]` (an
/// array of X; items named before X are required), `{ NAME = X, ... }` (a
/// table of X), `{ a = X, b = Y }` (a table of these keys; with `, ...`
/// others too), `A | B` (either), `[...]` (an array of the other forms),
/// `"WORD"` (the word, written as a string), `"text"` (a string), and
/// `TABLE` (a table of the keys whose section is this key's name).
pub struct ValueWord {
    pub word: &'static str,
    /// The JSON types a value may have ("integer", "string", "boolean").
    pub types: &'static [&'static str],
    /// A regular expression a string value matches whole, or "": the
    /// fixed shape the checker reads, so an editor flags what never could
    /// be one (the checker still has the last word: ranges, files, users).
    pub pattern: &'static str,
}

const fn word(
    word: &'static str,
    types: &'static [&'static str],
    pattern: &'static str,
) -> ValueWord {
    ValueWord {
        word,
        types,
        pattern,
    }
}

const STRING: &[&str] = &["string"];

pub const VALUE_WORDS: &[ValueWord] = &[
    word("INTEGER", &["integer"], ""),
    word("BOOL", &["boolean"], ""),
    word("STRING", STRING, ""),
    word("NAME", STRING, ""),
    word("GROUP", STRING, ""),
    word("PATH", STRING, "."),
    word("GLOB", STRING, "."),
    word("PROGRAM", STRING, "."),
    word("ARG", STRING, ""),
    // units::duration: digits and an optional unit.
    word("DURATION", STRING, "^[0-9]+(ms|s|m|h|d)?$"),
    // units::rate.
    word("COUNT/DURATION", STRING, "^[0-9]+/[0-9]+(ms|s|m|h|d)?$"),
    // units::octal: at most five octal digits.
    word("OCTAL", STRING, "^[0-7]{1,5}$"),
    // addr.rs: a scheme, then IP:PORT ([v6]:PORT) or an absolute or
    // abstract socket path.
    word(
        "ADDRESS",
        STRING,
        "^((tcp|udp)://([0-9.]+|\\[[0-9A-Fa-f:.]+\\]):[0-9]+|(unix|unixgram)://[/@].+)$",
    ),
    // access.rs: an IPv4 or IPv6 address, with or without /BITS.
    word("CIDR", STRING, "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"),
    word("BITS", &["integer"], ""),
    // rlimits: a number, or a size like "512M" or "infinity".
    word("VALUE", &["integer", "string"], ""),
];

/// One key as the manual describes it.
pub struct KeyDoc {
    /// "daemon", "service" or "listen" (a table entry of `listen`).
    pub section: &'static str,
    pub name: &'static str,
    /// The form of its value.
    pub value: &'static str,
    /// The default, or "" when there is none (required or unset).
    pub default: &'static str,
    pub text: &'static str,
}

const fn key(
    section: &'static str,
    name: &'static str,
    value: &'static str,
    default: &'static str,
    text: &'static str,
) -> KeyDoc {
    KeyDoc {
        section,
        name,
        value,
        default,
        text,
    }
}

pub const KEY_DOCS: &[KeyDoc] = &[
    key("daemon", "max_children", "INTEGER", "1024", "Children running at once over all services; at the limit new clients wait in the kernel backlog."),
    key("daemon", "control", "PATH", "", "The control socket (mode 0600) that summond status asks; a relative path is taken from this file's directory."),
    key("daemon", "include", "[GLOB, ...]", "", "Drop-in files of [[service]] entries, merged in sorted order; relative patterns are taken from the main file's directory; a pattern matching nothing is fine; ** is refused."),
    key("daemon", "log_format", "\"text\" | \"json\"", "\"text\"", "json: one JSON object per line on stderr (ts, level, event, service, peer, pid, status, duration_s, msg)."),
    key("daemon", "metrics", "ADDRESS", "", "tcp://IP:PORT or unix:///path: Prometheus metrics at GET /metrics and a status page at GET /, served from the event loop."),
    key("service", "name", "STRING", "", "Required, unique: letters, digits, _ . and -."),
    key("service", "listen", "ADDRESS | TABLE | [...]", "", "Required: tcp://IP:PORT, udp://IP:PORT, unix:///path, unixgram:///path, unix://@abstract; a table { address, name } names the fd in LISTEN_FDNAMES."),
    key("service", "exec", "[PROGRAM, ARG, ...]", "", "Required: the argv; PROGRAM absolute or found in PATH when the config loads; internal:echo, internal:discard, internal:chargen, internal:daytime and internal:time are served inside summond."),
    key("service", "accept", "BOOL", "true (false with a datagram address)", "true: one child per connection; false: one child gets the listening sockets."),
    key("service", "pass", "\"stdio\" | \"listen_fds\"", "\"stdio\"", "How the socket reaches the child: as fd 0 and 1, or as fd 3, 4, ... with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES."),
    key("service", "stderr", "\"inherit\" | \"socket\" | \"null\"", "\"inherit\"", "The child's fd 2: summond's stderr, the connection (stdio only), or /dev/null."),
    key("service", "user", "NAME", "", "Run the child as this user (summond must be root)."),
    key("service", "group", "NAME", "the user's primary group", "Run the child with this group (summond must be root)."),
    key("service", "env", "{ NAME = \"value\", ... }", "", "Extra environment for the child; the variables summond sets itself are refused."),
    key("service", "max_instances", "INTEGER", "", "Children of this service at once; at the limit clients wait in the backlog."),
    key("service", "max_per_source", "INTEGER", "", "Accept mode: children per client (prefix, or uid on a unix socket); more are refused."),
    key("service", "allow", "[CIDR, ...]", "", "Accept mode: only these clients are served."),
    key("service", "deny", "[CIDR, ...]", "", "Accept mode: these clients are refused; deny wins over allow."),
    key("service", "proxy_protocol", "\"v1\" | \"v2\" | \"any\"", "", "Every connection starts with HAProxy's PROXY header (text v1, binary v2, or either), read by summond before anything else and never passed on; the header's client is the client everywhere (variables, allow/deny, per-source limits, logs). Needs proxy_from; TCP sockets and accept mode only."),
    key("service", "proxy_from", "[CIDR, ...]", "", "With proxy_protocol: the peers (the load balancers) that may send a header; any other peer is refused (reason proxy) before a byte is read. A block wider than /8 (IPv4) or /7 (IPv6) is an error: write \"any\" to trust every peer (a port only balancers can reach)."),
    key("service", "socket_mode", "\"OCTAL\"", "", "File mode of the service's unix socket files."),
    key("service", "socket_user", "NAME", "", "Owner of the service's unix socket files (root only)."),
    key("service", "socket_group", "NAME", "", "Group of the service's unix socket files (root only)."),
    key("service", "socket_directory_mode", "\"OCTAL\"", "", "Unix socket files: missing parent directories of the path are made before bind with this mode, owned by summond's user, never through a symbolic link; without it a missing directory is an error."),
    key("service", "clear_env", "BOOL", "false", "true: the child gets only PATH, passenv, env and the variables of its start mode."),
    key("service", "passenv", "[NAME, ...]", "", "With clear_env: variables kept from summond's environment."),
    key("service", "working_directory", "PATH", "\"/\"", "The child's working directory (inside chroot when both are set); a relative path is taken from the config file's directory."),
    key("service", "chroot", "PATH", "", "The child's root directory (root only); exec is then found inside it."),
    key("service", "umask", "\"OCTAL\"", "summond's", "The child's umask."),
    key("service", "nice", "INTEGER", "", "The child's niceness, -20 to 19 (negative needs root)."),
    key("service", "rlimits", "{ NAME = VALUE, ... }", "", "Resource limits (soft and hard): nofile, nproc, as, cpu, core, fsize, data, stack, memlock; sizes take K, M, G, T or \"infinity\" (the most the kernel allows: fs.nr_open for nofile; a number above it is an error)."),
    key("service", "no_new_privs", "BOOL", "true", "Set PR_SET_NO_NEW_PRIVS in the child, so setuid programs gain nothing."),
    key("service", "supplementary_groups", "BOOL", "true", "Give the child the user's groups from the group database; false: only the primary group."),
    key("service", "extra_groups", "[GROUP, ...]", "", "More supplementary groups for the child, after the user's (or after its primary group alone, with supplementary_groups = false) (root only)."),
    key("service", "runtime_directory", "NAME | [NAME, ...]", "", "Directories made under /run (as non-root: $XDG_RUNTIME_DIR) when the service is set up (start, reload, upgrade), owned by the service's user and group; relative names of letters, digits, _ . - joined by /; never made through a symbolic link; two enabled services may share one only with the same owner and mode; left in place at stop."),
    key("service", "runtime_directory_mode", "\"OCTAL\"", "\"0755\"", "The mode of the runtime_directory directories (parents summond makes on the way get 0755)."),
    key("service", "max_runtime", "DURATION", "", "Accept mode: SIGTERM the child's process group after this long, SIGKILL 5 s later."),
    key("service", "instances", "INTEGER", "1", "accept = false: keep this many children (1 to 256, and not above max_instances or [daemon] max_children), each given every listening socket (LISTEN_FDS, its own LISTEN_PID), all accepting from the same queues; started at the first client (or at startup with start = \"eager\"); one that dies is replaced at the next client while the others serve, under the restart guard."),
    key("service", "start", "\"demand\" | \"eager\"", "\"demand\"", "accept = false: demand starts the children at the first client; eager at startup, at the reload that adds the service, and after summond restart."),
    key("service", "ready_timeout", "DURATION", "", "accept = false: every child gets a NOTIFY_SOCKET of summond's (sd_notify(3)); one that has not sent READY=1 by then (from its own process group) is stopped (SIGTERM to its group, SIGKILL 5 s later) and counted as a failed start toward the restart guard. READY=1 and STATUS= show in summond status."),
    key("service", "idle_timeout", "DURATION", "\"5m\"", "Internal services over TCP: close a client after this long without a byte moved either way."),
    key("service", "rate", "\"COUNT/DURATION\"", "", "New children service-wide as a token bucket; when empty the listener pauses until a token is back. For an internal service's UDP datagrams, the answers it sends (default 100/1s); over it datagrams are read and dropped, which ends a loop between two servers."),
    key("service", "per_source_rate", "\"COUNT/DURATION\"", "", "New connections per client (prefix) as a token bucket; over it that client is refused, others are served."),
    key("service", "per_source_prefix", "{ v4 = BITS, v6 = BITS }", "{ v4 = 32, v6 = 64 }", "How clients are grouped for max_per_source and per_source_rate."),
    key("service", "banner", "STRING", "", "Accept mode: written to each client before its child starts (at most 4096 bytes)."),
    key("service", "banner_fail", "STRING", "", "Accept mode: written to a client refused by a limit or access rule (at most 4096 bytes)."),
    key("service", "backlog", "INTEGER", "4096", "The listen backlog of stream sockets (capped by net.core.somaxconn)."),
    key("service", "v6only", "BOOL", "true", "IPv6 addresses: false makes one dual-stack socket; its IPv4 clients are plain IPv4 everywhere."),
    key("service", "reuse_port", "BOOL", "false", "Set SO_REUSEPORT on TCP and UDP sockets."),
    key("service", "keepalive", "BOOL", "false", "Set SO_KEEPALIVE on TCP listeners; accepted connections inherit it."),
    key("service", "nodelay", "BOOL", "false", "Set TCP_NODELAY on TCP listeners; accepted connections inherit it."),
    key("service", "freebind", "BOOL", "false", "Set IP_FREEBIND: bind an address not (yet) on this host."),
    key("service", "disabled", "BOOL", "false", "Keep the entry, listen on nothing."),
    key("service", "forward", "ADDRESS", "", "Forward mode: tcp://IP:PORT or unix:///path where the backend (exec) listens on its own. summond accepts each client, starts the backend at the first one, holds clients while it starts, relays each to its own connection to this address (half-close passed on, at most 60 KiB held per direction), and stops the backend after idle_stop. Stream addresses only; not with accept = false, pass, stderr = \"socket\" or an internal service."),
    key("service", "ready", "\"connect\" | \"notify\"", "\"connect\"", "With forward: connect: the backend is ready when forward accepts a connection (tried at once, 0.5, 1, 1 and 1 ms apart, then every 2 ms); notify: when it, or a process of its group, sends READY=1 to the NOTIFY_SOCKET summond gives it (sd_notify(3); datagrams from other processes are ignored)."),
    key("service", "start_timeout", "DURATION", "\"60s\"", "With forward: a backend not ready by then is stopped, its waiting clients closed, and the start counted as a failure toward the restart guard. Also how long a client waits for a unix:// backend whose listen backlog is full before it is refused (backend_busy)."),
    key("service", "idle_stop", "DURATION", "never", "With forward: stop the backend after this long without a relayed connection; the next client starts it again."),
    key("service", "stop_timeout", "DURATION", "\"10s\"", "With forward: stopping the backend (idle_stop, start_timeout, a reload) sends SIGTERM to its process group, SIGKILL after this, at summond's own stop too (which waits for it that long at most)."),
    key("service", "forward_proxy_protocol", "\"v1\" | \"v2\"", "", "With forward: each backend connection starts with a PROXY header (HAProxy's protocol) naming the client and the address it reached, so a backend that reads one (nginx listen ... proxy_protocol) sees the real client; PROXY UNKNOWN (v1) or LOCAL (v2) for a client that is not an IP client."),
    key("service", "tls", "{ cert = PATH, key = PATH, ... }", "", "Accept mode: summond does the TLS handshake (rustls, in the loop, 10 s at most) and the child gets the plaintext over a socket pair, with SSL_PROTOCOL, SSL_CIPHER, SSL_TLS_SNI, SSL_CLIENT_VERIFY and SSL_CLIENT_S_DN. Also in the table: client_ca = PATH (require client certificates it signed), alpn = [\"h2\", ...], min_version = \"1.2\" (default) or \"1.3\", sni = { \"host\" = { cert, key } }. The files are read at load and on SIGHUP, as root, from directories only root or summond can write; the key must not be readable by every user, and never reaches a child. With forward: the decrypted stream goes to the backend (close_notify is its EOF; a v2 forward_proxy_protocol header names the ALPN protocol and server name)."),
    key("listen", "address", "ADDRESS", "", "Required: in a listen table, the address."),
    key("listen", "name", "STRING", "the service name", "In a listen table: the name of this fd in LISTEN_FDNAMES."),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_checker_knows_is_documented_and_nothing_else() {
        for (section, keys) in [
            ("daemon", DAEMON_KEYS),
            ("service", SERVICE_KEYS),
            ("listen", LISTEN_TABLE_KEYS),
        ] {
            let documented: Vec<&str> = KEY_DOCS
                .iter()
                .filter(|d| d.section == section)
                .map(|d| d.name)
                .collect();
            assert_eq!(documented, keys, "[{section}] keys and their documentation");
        }
        assert!(KEY_DOCS
            .iter()
            .all(|d| !d.text.is_empty() && !d.value.is_empty()));
    }
}
