//! What the keys of a socket unit and its service map to: the Listen*=
//! kinds, the options with a summond key of the same meaning, and for
//! every key summond has no home for, the reason, true for that key,
//! written in its `# not carried over:` comment.

/// `ListenStream=`/`ListenDatagram=` value → a summond address.
pub fn address(value: &str, stream: bool) -> Option<String> {
    let (inet, unix) = if stream {
        ("tcp", "unix")
    } else {
        ("udp", "unixgram")
    };
    // A path below the legacy /var/run is systemd's /run (it rewrites
    // it, with a warning): /var/run is a link, and summond follows no
    // link on a socket's path.
    if let Some(rest) = value.strip_prefix("/var/run/") {
        return Some(format!("{unix}:///run/{rest}"));
    }
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

/// Every `Listen*=` key: each line is one fd, in line order
/// (sd_listen_fds(3)); `Some(stream)` for the kinds summond serves.
pub const LISTEN: [(&str, Option<bool>); 8] = [
    ("ListenStream", Some(true)),
    ("ListenDatagram", Some(false)),
    ("ListenSequentialPacket", None),
    ("ListenFIFO", None),
    ("ListenSpecial", None),
    ("ListenNetlink", None),
    ("ListenMessageQueue", None),
    ("ListenUSBFunction", None),
];

/// Boolean socket options with a summond key of the same meaning.
pub const SOCKET_FLAGS: [(&str, &str); 4] = [
    ("KeepAlive", "keepalive"),
    ("NoDelay", "nodelay"),
    ("ReusePort", "reuse_port"),
    ("FreeBind", "freebind"),
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

/// Keys that restrict which IP peers the program may talk to: on a
/// service listening on IP they refuse it (summond's allow/deny filter
/// accepted connections only, not what the program itself sends or
/// receives); on one listening only on Unix sockets they are the
/// program's own sandbox (journald's IPAddressDeny=any), a comment.
pub const ACCESS: &[&str] = &[
    "IPAddressAllow",
    "IPAddressDeny",
    "IPIngressFilterPath",
    "IPEgressFilterPath",
];

const SANDBOX: &str = "namespace sandboxing is systemd's and summond has no home for it: \
     the program runs without it (use chroot, user and no_new_privs, or wrap exec in bwrap)";

/// (keys, why none is carried over).
const REASONS: &[(&[&str], &str)] = &[
    (
        &["Description"],
        "summond keeps no description (the comment above names the unit)",
    ),
    (&["Documentation"], "summond keeps no documentation links"),
    (
        &[
            "Before",
            "After",
            "Wants",
            "Requires",
            "Requisite",
            "BindsTo",
            "PartOf",
            "Upholds",
            "Conflicts",
            "OnFailure",
            "OnSuccess",
            "PropagatesReloadTo",
            "ReloadPropagatedFrom",
            "PropagatesStopTo",
            "StopPropagatedFrom",
            "JoinsNamespaceOf",
            "RequiresMountsFor",
            "WantsMountsFor",
            "DefaultDependencies",
            "Slice",
        ],
        "an order or dependency between units: summond has no units, it sets up all its \
         services when it starts",
    ),
    (
        &[
            "WantedBy",
            "RequiredBy",
            "UpheldBy",
            "Also",
            "Alias",
            "DefaultInstance",
        ],
        "how the unit is enabled: a service in summond's config is enabled unless it says \
         disabled = true",
    ),
    (
        &[
            "StartLimitIntervalSec",
            "StartLimitBurst",
            "StartLimitAction",
            "StartLimitInterval",
        ],
        "summond's crash guard is fixed: 5 failing children in 10 s hold the service 10 s",
    ),
    (
        &[
            "StopWhenUnneeded",
            "RefuseManualStart",
            "RefuseManualStop",
            "AllowIsolate",
            "IgnoreOnIsolate",
            "CollectMode",
            "JobTimeoutSec",
            "JobRunningTimeoutSec",
            "JobTimeoutAction",
            "JobTimeoutRebootArgument",
            "SuccessAction",
            "FailureAction",
            "SuccessActionExitStatus",
            "FailureActionExitStatus",
            "RebootArgument",
            "SourcePath",
        ],
        "how systemd manages the unit itself: summond has no units",
    ),
    (
        &[
            "KeepAliveTimeSec",
            "KeepAliveIntervalSec",
            "KeepAliveProbes",
            "DeferAcceptSec",
            "ReceiveBuffer",
            "SendBuffer",
            "IPTOS",
            "IPTTL",
            "Mark",
            "Priority",
            "Transparent",
            "Broadcast",
            "BindToDevice",
            "TCPCongestion",
            "PassCredentials",
            "PassSecurity",
            "PassPacketInfo",
            "PassPIDFD",
            "AcceptFileDescriptors",
            "Timestamping",
            "PipeSize",
            "MessageQueueMaxMessages",
            "MessageQueueMessageSize",
            "SocketProtocol",
            "SmackLabel",
            "SmackLabelIPIn",
            "SmackLabelIPOut",
            "SELinuxContextFromNet",
            "Writable",
            "FlushPending",
        ],
        "a socket option summond does not set: the socket gets the kernel's default",
    ),
    (
        &["Symlinks"],
        "summond makes no symbolic links to its sockets: they are not made",
    ),
    (
        &["RemoveOnStop"],
        "summond removes the socket files it created when it stops, whatever this says",
    ),
    (
        &[
            "TriggerLimitIntervalSec",
            "TriggerLimitBurst",
            "PollLimitIntervalSec",
            "PollLimitBurst",
        ],
        "summond never stops a socket for being busy: at a limit clients wait in the \
         backlog (a rate of starts is summond's `rate`, not set from this)",
    ),
    (
        &[
            "ExecStartPre",
            "ExecStartPost",
            "ExecStopPre",
            "ExecStopPost",
            "ExecCondition",
        ],
        "a command systemd runs before or after the program: summond runs only `exec`, so \
         this command is not run",
    ),
    (
        &["ExecReload"],
        "summond's reload rereads its own config and signals no child: this command is not run",
    ),
    (
        &["ExecStop"],
        "summond stops an accept = false child with SIGTERM when it stops: this command is not run",
    ),
    (
        &[
            "Restart",
            "RestartSec",
            "RestartSteps",
            "RestartMaxDelaySec",
        ],
        "summond does not restart a program that exited: the next client starts it again",
    ),
    (
        &[
            "RestartPreventExitStatus",
            "RestartForceExitStatus",
            "SuccessExitStatus",
        ],
        "summond restarts nothing by exit status: each exit is logged and counted, and \
         failures count toward the crash guard",
    ),
    (
        &[
            "KillMode",
            "KillSignal",
            "RestartKillSignal",
            "FinalKillSignal",
            "SendSIGKILL",
            "SendSIGHUP",
            "TimeoutStopSec",
            "TimeoutSec",
            "WatchdogSignal",
        ],
        "summond's way of stopping is fixed: SIGTERM to an accept = false child when summond \
         stops, connection children left to finish, and max_runtime's SIGTERM to the \
         child's process group with SIGKILL 5 s later",
    ),
    (
        &[
            "BusName",
            "NotifyAccess",
            "WatchdogSec",
            "TimeoutStartSec",
            "TimeoutAbortSec",
            "PIDFile",
            "GuessMainPID",
            "RemainAfterExit",
            "FileDescriptorStoreMax",
            "FileDescriptorStorePreserve",
            "USBFunctionDescriptors",
            "USBFunctionStrings",
            "OpenFile",
            "ExitType",
        ],
        "summond waits for no readiness and tracks no main pid: the program counts as \
         started once it runs, and its exit ends it",
    ),
    (
        &["Sockets"],
        "the sockets the program gets are those of the .socket imported with it",
    ),
    (
        &[
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "PrivateUsers",
            "PrivateNetwork",
            "PrivateIPC",
            "PrivateMounts",
            "PrivatePIDs",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "ProtectClock",
            "ProtectHostname",
            "ProtectProc",
            "ProcSubset",
            "MemoryDenyWriteExecute",
            "ReadWritePaths",
            "ReadOnlyPaths",
            "InaccessiblePaths",
            "ExecPaths",
            "NoExecPaths",
            "TemporaryFileSystem",
            "BindPaths",
            "BindReadOnlyPaths",
            "MountAPIVFS",
            "SystemCallFilter",
            "SystemCallArchitectures",
            "SystemCallErrorNumber",
            "SystemCallLog",
            "CapabilityBoundingSet",
            "AmbientCapabilities",
            "RestrictAddressFamilies",
            "RestrictNamespaces",
            "RestrictRealtime",
            "RestrictSUIDSGID",
            "RestrictFileSystems",
            "RestrictNetworkInterfaces",
            "SocketBindAllow",
            "SocketBindDeny",
            "LockPersonality",
            "RemoveIPC",
            "KeyringMode",
            "SecureBits",
            "NetworkNamespacePath",
            "IPCNamespacePath",
            "DevicePolicy",
            "DeviceAllow",
            "ProtectProc",
            "NoExecPaths",
            "MountFlags",
            "SELinuxContext",
            "AppArmorProfile",
            "SmackProcessLabel",
        ],
        SANDBOX,
    ),
    (
        &[
            "CPUQuota",
            "CPUWeight",
            "CPUShares",
            "StartupCPUWeight",
            "MemoryMax",
            "MemoryHigh",
            "MemoryLow",
            "MemoryMin",
            "MemorySwapMax",
            "MemoryLimit",
            "TasksMax",
            "IOWeight",
            "IOReadBandwidthMax",
            "IOWriteBandwidthMax",
            "Delegate",
            "CPUAccounting",
            "MemoryAccounting",
            "TasksAccounting",
            "IOAccounting",
            "IPAccounting",
            "AllowedCPUs",
            "ManagedOOMSwap",
            "ManagedOOMMemoryPressure",
        ],
        "cgroup resource control is systemd's: summond limits a child with rlimits only",
    ),
    (
        &[
            "OOMScoreAdjust",
            "OOMPolicy",
            "CPUSchedulingPolicy",
            "CPUSchedulingPriority",
            "CPUSchedulingResetOnFork",
            "CPUAffinity",
            "NUMAPolicy",
            "NUMAMask",
            "IOSchedulingClass",
            "IOSchedulingPriority",
            "TimerSlackNSec",
            "Personality",
            "CoredumpFilter",
            "IgnoreSIGPIPE",
        ],
        "a process attribute summond does not set: the child gets summond's (SIGPIPE at \
         its default)",
    ),
    (
        &[
            "SyslogIdentifier",
            "SyslogFacility",
            "SyslogLevel",
            "SyslogLevelPrefix",
            "LogLevelMax",
            "LogExtraFields",
            "LogRateLimitIntervalSec",
            "LogRateLimitBurst",
            "LogNamespace",
            "LogFilterPatterns",
        ],
        "journal fields: the child's stderr goes to summond's own log",
    ),
    (
        &[
            "StateDirectory",
            "CacheDirectory",
            "LogsDirectory",
            "ConfigurationDirectory",
            "StateDirectoryMode",
            "CacheDirectoryMode",
            "LogsDirectoryMode",
            "ConfigurationDirectoryMode",
        ],
        "summond creates no directory but runtime_directory: create it by hand, owned by \
         the service's user",
    ),
    (
        &["RuntimeDirectoryPreserve"],
        "summond leaves runtime_directory in place when the service stops (/run is \
         emptied at boot)",
    ),
    (
        &["PassEnvironment", "UnsetEnvironment"],
        "systemd's own environment: the child gets summond's (clear_env and passenv choose \
         from it)",
    ),
    (&["PAMName"], "summond opens no PAM session"),
    (
        &[
            "LimitRSS",
            "LimitNICE",
            "LimitRTPRIO",
            "LimitRTTIME",
            "LimitMSGQUEUE",
            "LimitSIGPENDING",
            "LimitLOCKS",
        ],
        "summond's rlimits has no such limit: the child gets summond's",
    ),
    (
        &[
            "TTYPath",
            "TTYReset",
            "TTYVHangup",
            "TTYVTDisallocate",
            "UtmpIdentifier",
            "UtmpMode",
            "StandardInputText",
            "StandardInputData",
        ],
        "a terminal or utmp setting: summond's children have no terminal",
    ),
];

/// Why `key` is not carried over; for a key the table does not know, a
/// reason that says so.
pub fn reason(key: &str) -> &'static str {
    if key.starts_with("Condition") || key.starts_with("Assert") {
        return "summond checks no condition: the service is started whatever it says \
                (check it by hand)";
    }
    REASONS
        .iter()
        .find(|(keys, _)| keys.contains(&key))
        .map(|(_, why)| *why)
        .unwrap_or(
            "not a setting the importer knows: summond does nothing for it; check by hand \
             what it did",
        )
}

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
        // systemd's rewrite of the legacy directory (a link to /run).
        assert_eq!(
            address("/var/run/uwsgi/a.socket", true),
            Some("unix:///run/uwsgi/a.socket".into())
        );
    }

    #[test]
    fn reasons_are_the_keys_own() {
        assert!(reason("ExecStartPost").contains("not run"));
        assert!(reason("KillMode").contains("process group"));
        assert!(reason("ConditionPathExists").contains("condition"));
        assert!(reason("Frobnicate").contains("not a setting the importer knows"));
    }
}
