//! What the keys of a socket unit and its service map to, as tables.

/// Socket kinds summond does not serve (each is reported).
pub const UNSERVED_LISTEN: &[&str] = &[
    "ListenSequentialPacket",
    "ListenFIFO",
    "ListenSpecial",
    "ListenNetlink",
    "ListenMessageQueue",
    "ListenUSBFunction",
];

pub const SANDBOX_SETTINGS: &[&str] = &[
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateUsers",
    "PrivateNetwork",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectControlGroups",
    "MemoryDenyWriteExecute",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "SystemCallFilter",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
];

/// `ListenStream=`/`ListenDatagram=` value → a summond address.
pub fn address(value: &str, stream: bool) -> Option<String> {
    let (inet, unix) = if stream {
        ("tcp", "unix")
    } else {
        ("udp", "unixgram")
    };
    // A path (unix:///run/x) or an abstract name (unix://@x).
    if value.starts_with('/') || value.starts_with('@') {
        return Some(format!("{unix}://{value}"));
    }
    if let Ok(port) = value.parse::<u16>() {
        return Some(format!("{inet}://[::]:{port}"));
    }
    if value.parse::<std::net::SocketAddr>().is_ok() {
        return Some(format!("{inet}://{value}"));
    }
    None
}

/// Boolean socket options with a summond key of the same meaning.
pub const SOCKET_FLAGS: [(&str, &str); 4] = [
    ("KeepAlive", "keepalive"),
    ("NoDelay", "nodelay"),
    ("ReusePort", "reuse_port"),
    ("FreeBind", "freebind"),
];

/// The [Socket] keys `socket_options` and `listen_addresses` read.
pub const SOCKET_KNOWN: &[&str] = &[
    "ListenStream",
    "ListenDatagram",
    "Accept",
    "MaxConnections",
    "MaxConnectionsPerSource",
    "SocketMode",
    "SocketUser",
    "SocketGroup",
    "Backlog",
    "BindIPv6Only",
    "KeepAlive",
    "NoDelay",
    "ReusePort",
    "FreeBind",
    "FileDescriptorName",
    "Service",
    "RemoveOnStop",
];

/// `LimitX=` → the name in summond's `rlimits`.
pub const RLIMITS: [(&str, &str); 9] = [
    ("LimitNOFILE", "nofile"),
    ("LimitNPROC", "nproc"),
    ("LimitAS", "as"),
    ("LimitCPU", "cpu"),
    ("LimitCORE", "core"),
    ("LimitFSIZE", "fsize"),
    ("LimitDATA", "data"),
    ("LimitSTACK", "stack"),
    ("LimitMEMLOCK", "memlock"),
];

/// Service settings about a unit's life beyond its one program.
pub const ONE_PROGRAM: &[&str] = &[
    "Type",
    "NotifyAccess",
    "ExecReload",
    "ExecStop",
    "ExecStartPre",
    "ExecStartPost",
    "Restart",
    "OOMScoreAdjust",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values_become_addresses() {
        assert_eq!(address("22", true), Some("tcp://[::]:22".into()));
        assert_eq!(
            address("127.0.0.1:53", false),
            Some("udp://127.0.0.1:53".into())
        );
        assert_eq!(address("@x", true), Some("unix://@x".into()));
        assert_eq!(
            address("/run/a.sock", false),
            Some("unixgram:///run/a.sock".into())
        );
        assert_eq!(address("eth0", true), None);
    }
}
