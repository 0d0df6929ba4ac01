//! The keys each section of the services file accepts: one table that the
//! checker, the fuzzer's grammar (and later the man page and the importer)
//! share, so a key cannot exist in one and be missing from another.

/// The keys each section accepts (also the fuzzer's dictionary).
pub const TOP_KEYS: &[&str] = &["daemon", "service"];
pub const DAEMON_KEYS: &[&str] = &["max_children", "control", "include", "log_format"];
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
    "socket_mode",
    "socket_user",
    "socket_group",
    "clear_env",
    "passenv",
    "working_directory",
    "chroot",
    "umask",
    "nice",
    "rlimits",
    "no_new_privs",
    "supplementary_groups",
    "max_runtime",
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
];
pub const LISTEN_TABLE_KEYS: &[&str] = &["address", "name"];
