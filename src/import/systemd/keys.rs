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

const SANDBOX: &str = "sandboxing systemd applies (namespaces and mounts, system call \
     filters, capability limits, security labels) has no home in summond: the program runs \
     without it (use chroot, user and no_new_privs, or wrap exec in bwrap)";

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
            "SmackLabel",
            "SmackLabelIPIn",
            "SmackLabelIPOut",
            "SELinuxContextFromNet",
        ],
        "a socket option summond does not set: the socket gets the kernel's default",
    ),
    (
        &["NonBlocking"],
        "summond passes the sockets blocking, as systemd does without NonBlocking=yes: a \
         program that expects O_NONBLOCK without setting it itself may block in accept or read",
    ),
    (
        &["Writable"],
        "it is about ListenSpecial= files, which summond does not open",
    ),
    (
        &["FlushPending"],
        "summond never flushes a socket before it starts the program: the program reads \
         what is queued (FlushPending=no, systemd's default)",
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
        ],
        "a command systemd runs before or after the program: summond runs only `exec`, so \
         this command is not run",
    ),
    (
        &["ExecCondition"],
        "a check systemd runs first, not starting the program when it fails: summond does \
         not run it, and starts the program whatever it would say",
    ),
    (
        &["PermissionsStartOnly"],
        "it is about ExecStartPre= and the other commands summond does not run",
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
            "ExitType",
            "Type",
        ],
        "summond waits for no readiness (no READY=1, bus name or fork) and tracks no main \
         pid: the program counts as started once it runs, and its exit ends it",
    ),
    (
        &["FileDescriptorStoreMax", "FileDescriptorStorePreserve"],
        "summond keeps no fd store: fds the program hands back (FDSTORE=1) are not kept \
         for its next start",
    ),
    (
        &["USBFunctionDescriptors", "USBFunctionStrings"],
        "for ListenUSBFunction=, which summond does not serve",
    ),
    (
        &["OpenFile"],
        "systemd opens these files and passes them to the program as fds after the \
         sockets; summond passes the sockets only: the program does not get them",
    ),
    (
        &[
            "LoadCredential",
            "LoadCredentialEncrypted",
            "SetCredential",
            "SetCredentialEncrypted",
            "ImportCredential",
        ],
        "credentials systemd gives the program in $CREDENTIALS_DIRECTORY: summond gives \
         none, so the program does not find them",
    ),
    (
        &["AmbientCapabilities"],
        "capabilities systemd grants the program: summond grants none, so a program run \
         as a user other than root lacks them",
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
            "ReadWriteDirectories",
            "ReadOnlyDirectories",
            "InaccessibleDirectories",
            "MountImages",
            "ExtensionImages",
            "ExtensionDirectories",
            "RootImageOptions",
            "RootHash",
            "RootVerity",
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
        ],
        "a process attribute summond does not set: the child gets summond's",
    ),
    (
        &["IgnoreSIGPIPE"],
        "summond's child gets SIGPIPE at its default: with IgnoreSIGPIPE=yes (systemd's \
         default) a write to a closed connection fails with EPIPE, here it kills the program",
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
        &["PassEnvironment"],
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
        ],
        "a terminal or utmp setting: summond's children have no terminal",
    ),
    (
        &["StandardInputText", "StandardInputData"],
        "text systemd gives the program as its stdin (StandardInput=data): summond gives \
         it the connection or /dev/null",
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

    /// Each reason says what is true of its own key.
    #[test]
    fn no_reason_is_anothers() {
        let unknown = "not a setting the importer knows";
        for k in [
            "Type",
            "LoadCredential",
            "SetCredential",
            "ImportCredential",
            "ReadWriteDirectories",
            "ReadOnlyDirectories",
            "InaccessibleDirectories",
            "PermissionsStartOnly",
            "MountImages",
            "ExtensionImages",
            "RootImageOptions",
            "NonBlocking",
        ] {
            assert!(!reason(k).contains(unknown), "{k}");
        }
        assert!(!reason("OOMScoreAdjust").contains("SIGPIPE"));
        assert!(!reason("CPUAffinity").contains("SIGPIPE"));
        assert!(reason("IgnoreSIGPIPE").contains("SIGPIPE"));
        assert!(reason("Type").contains("readiness"));
        assert!(reason("OpenFile").contains("fd"));
        assert!(!reason("AmbientCapabilities").contains("sandbox"));
        assert!(reason("ExecCondition").contains("whatever"));
        assert!(!reason("StandardInputText").contains("terminal"));
        assert!(!reason("Writable").contains("socket option"));
        assert!(!reason("FlushPending").contains("socket option"));
        assert!(!reason("UnsetEnvironment").contains("systemd's own environment"));
        assert!(!SANDBOX.contains("namespace sandboxing"));
    }
}
