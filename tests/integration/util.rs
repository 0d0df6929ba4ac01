//! The harness: a fresh temp dir per test, the config written there, the
//! real `summond` binary started with its log captured to a file, ports
//! picked at run time on loopback, bounded waits. Dropping a `Summond`
//! SIGTERMs it by pid (SIGKILL after a deadline) and prints its log if the
//! test is failing.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_summond");
/// Generous: the CI machine has 2 cores and may be loaded.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "summond-it-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port, free for TCP and UDP, that nobody in this test binary
/// has used yet. It is taken below the kernel's ephemeral range
/// (/proc/sys/net/ipv4/ip_local_port_range, 32768 up by default): a port
/// the kernel picked and the test released could be picked again for a
/// client's connect() before summond binds it (bind then failed with
/// EADDRINUSE in CI).
pub fn free_port() -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const FIRST: u16 = 20_000;
    const COUNT: u32 = 12_000;
    // Where to start differs by process, so two test runs at once seldom
    // try the same ports in the same order.
    let start = std::process::id() % COUNT;
    let mut used = USED.lock().unwrap();
    let used = used.get_or_insert_with(HashSet::new);
    for i in 0..COUNT {
        let port = FIRST + ((start + i) % COUNT) as u16;
        if used.contains(&port) {
            continue;
        }
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            used.insert(port);
            return port;
        }
    }
    panic!(
        "no free loopback port in {FIRST}..{}",
        u32::from(FIRST) + COUNT
    );
}

pub fn ipv6_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The path of an example program built by `cargo test`.
pub fn example(name: &str) -> PathBuf {
    let bin_dir = Path::new(BIN).parent().expect("binary has a directory");
    let path = bin_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples)",
        path.display()
    );
    path
}

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `exec = ["sh", "-c", SCRIPT]` as TOML.
pub fn sh(script: &str) -> String {
    format!("[\"sh\", \"-c\", {}]", toml_str(script))
}

pub struct Summond {
    pub child: Option<Child>,
    pub dir: TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    status: Option<ExitStatus>,
}

pub struct Start<'a> {
    pub config: &'a str,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    /// Wait for the "serving" line (false for runs expected to fail).
    pub wait_ready: bool,
    /// RLIMIT_NOFILE (soft, hard) to start summond with.
    pub nofile: Option<(u64, u64)>,
    /// A command that execs summond (e.g. `setpriv ...`), keeping its pid.
    pub wrapper: &'a [&'a str],
    /// RLIMIT_NPROC (soft = hard) to start summond with.
    pub nproc: Option<u64>,
    /// The summond binary to run (a copy an upgrade test replaces).
    pub binary: Option<&'a Path>,
}

impl Default for Start<'_> {
    fn default() -> Self {
        Start {
            config: "",
            args: &[],
            env: &[],
            wait_ready: true,
            nofile: None,
            wrapper: &[],
            nproc: None,
            binary: None,
        }
    }
}

impl Summond {
    /// Start summond on `config` (with `{dir}` replaced by the temp dir)
    /// and wait until it serves.
    pub fn start(config: &str) -> Summond {
        Summond::start_with(Start {
            config,
            ..Start::default()
        })
    }

    pub fn start_with(opts: Start<'_>) -> Summond {
        let dir = TempDir::new("run");
        Summond::start_in(dir, opts)
    }

    pub fn start_in(dir: TempDir, opts: Start<'_>) -> Summond {
        let config = dir.path("summond.toml");
        let text = opts.config.replace("{dir}", &dir.0.display().to_string());
        std::fs::write(&config, text).expect("write config");
        let log = dir.path("summond.log");
        let log_file = std::fs::File::create(&log).expect("create log");
        let bin = opts.binary.unwrap_or(Path::new(BIN));
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("-c").arg(&config);
        // debug, so tests can see per-connection lines, unless the test
        // chooses its own level
        if !opts.args.contains(&"--log-level") {
            cmd.args(["--log-level", "debug"]);
        }
        cmd.args(opts.args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let limits: Vec<(nix::libc::__rlimit_resource_t, u64, u64)> = opts
            .nofile
            .map(|(soft, hard)| (nix::libc::RLIMIT_NOFILE, soft, hard))
            .into_iter()
            .chain(opts.nproc.map(|n| (nix::libc::RLIMIT_NPROC, n, n)))
            .collect();
        if !limits.is_empty() {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(move || {
                    for (resource, soft, hard) in &limits {
                        let lim = nix::libc::rlimit {
                            rlim_cur: *soft,
                            rlim_max: *hard,
                        };
                        if nix::libc::setrlimit(*resource, &lim) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn summond");
        let mut s = Summond {
            child: Some(child),
            dir,
            config,
            log,
            status: None,
        };
        if opts.wait_ready {
            let ready = wait_until(TIMEOUT, || {
                s.log_text().contains(" serving ") || s.has_exited()
            });
            assert!(
                ready && !s.has_exited(),
                "summond did not start:\n{}",
                s.log_text()
            );
        }
        s
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        wait_until(TIMEOUT, || self.log_text().contains(needle))
    }

    pub fn has_exited(&mut self) -> bool {
        if self.status.is_some() {
            return true;
        }
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                self.status = Some(st);
                return true;
            }
        }
        false
    }

    /// Wait for summond to exit; None if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.has_exited());
        self.status
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY-free: kill(2) through the libc the crate already links.
        let rc = unsafe { nix::libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill {} {}", self.pid(), sig);
    }

    /// Pids of summond's live children, and how many of them are zombies.
    pub fn children(&self) -> (Vec<i32>, usize) {
        let pids = children_of(self.pid());
        let zombies = pids.iter().filter(|p| proc_state(**p) == Some('Z')).count();
        (pids, zombies)
    }

    /// How many fds summond's epoll instance watches now.
    pub fn epoll_watched(&self) -> usize {
        epoll_watched(self.pid())
    }

    /// Rewrite the config file (for reload tests).
    pub fn write_config(&self, config: &str) {
        let text = config.replace("{dir}", &self.dir.0.display().to_string());
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Rewrite the config, SIGHUP, and wait for the outcome line
    /// ("reload done" or "reload failed") to appear once more.
    pub fn reload(&self, config: &str) -> bool {
        let before = self.log_text();
        let outcomes =
            |t: &str| t.matches("reload done").count() + t.matches("reload failed").count();
        let n = outcomes(&before);
        let done_before = before.matches("reload done").count();
        self.write_config(config);
        self.signal(nix::libc::SIGHUP);
        assert!(
            wait_until(TIMEOUT, || outcomes(&self.log_text()) > n),
            "no reload outcome:\n{}",
            self.log_text()
        );
        self.log_text().matches("reload done").count() > done_before
    }

    /// Count of log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text().matches(needle).count()
    }
}

/// CPU time (user + system) a process has used, in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // fields 14 and 15 of stat; after ")" the state is index 0
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// The lowest fd number a process does not have open.
pub fn lowest_free_fd(pid: i32) -> u64 {
    let open: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    (0..).find(|n| !open.contains(n)).unwrap()
}

/// Set another process's soft RLIMIT_NOFILE, keeping its hard limit (so
/// it can be raised again without CAP_SYS_RESOURCE).
pub fn set_nofile(pid: i32, soft: u64) {
    let mut old = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with no new limit only writes the current one to `old`.
    unsafe { nix::libc::prlimit(pid, nix::libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    let new = nix::libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit reads `new` and writes nothing back (old is null).
    let rc =
        unsafe { nix::libc::prlimit(pid, nix::libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Leave `pid` exactly `spare` free fds: its soft RLIMIT_NOFILE becomes
/// its lowest free fd + `spare`. summond may hold an fd for a moment (it
/// reads /proc/self/smaps after loading a config), so one reading could
/// set the limit above a hole that then opens: the limit is set again
/// until a reading after it finds the same lowest free fd.
pub fn leave_free_fds(pid: i32, spare: u64) -> u64 {
    // Once the loop has turned, what startup or a reload does before it
    // (footprint::shed reads /proc/self/smaps through an fd of its own)
    // is over: a transient fd seen at both samples below would leave one
    // fd free once closed (a status client was then accepted in CI).
    assert!(
        loop_turns(pid, 1),
        "summond (pid {pid}) did not take its signals"
    );
    for _ in 0..100 {
        let lowest = lowest_free_fd(pid);
        set_nofile(pid, lowest + spare);
        if lowest_free_fd(pid) == lowest {
            return lowest + spare;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the fds of {pid} never settled");
}

/// The children of `pid`: from `/proc/PID/task/PID/children` where the
/// kernel has it (CONFIG_PROC_CHILDREN), else by scanning every process's
/// parent pid, so the answer never silently comes back empty.
pub fn children_of(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    if let Ok(text) = std::fs::read_to_string(path) {
        return text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| parent_pid(*p) == Some(pid))
        .collect()
}

pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after ")": state, then ppid
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How many fds the epoll instance of `pid` watches (its fdinfo lists one
/// `tfd:` line per registered fd).
pub fn epoll_watched(pid: i32) -> usize {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read fds") {
        let entry = entry.unwrap();
        let is_epoll = std::fs::read_link(entry.path())
            .map(|t| t.to_string_lossy().contains("eventpoll"))
            .unwrap_or(false);
        if is_epoll {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                entry.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            return info.lines().filter(|l| l.starts_with("tfd:")).count();
        }
    }
    panic!("process {pid} has no epoll fd");
}

/// The fd number in `pid` of the socket with `inode`.
pub fn fd_of_socket(pid: i32, inode: &str) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
}

/// Is the loopback TCP listener on `port` among the fds the epoll
/// instance of `pid` watches (a `tfd:` line of its fdinfo)?
pub fn epoll_watches_listener(pid: i32, port: u16) -> bool {
    let inode = listening_inode(port).unwrap_or_else(|| panic!("nothing listens on {port}"));
    let fd = fd_of_socket(pid, &inode).unwrap_or_else(|| panic!("{pid} has no fd for {port}"));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read fds");
    let epoll = fds
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("eventpoll"))
        })
        .unwrap_or_else(|| panic!("process {pid} has no epoll fd"));
    let info = std::fs::read_to_string(format!(
        "/proc/{pid}/fdinfo/{}",
        epoll.file_name().to_string_lossy()
    ))
    .unwrap_or_default();
    info.lines().any(|l| {
        l.strip_prefix("tfd:")
            .and_then(|r| r.split_whitespace().next()?.parse::<i32>().ok())
            == Some(fd)
    })
}

/// Clients waiting in the accept queue of the loopback TCP listener on
/// `port` (the rx_queue column of a LISTEN row of /proc/net/tcp).
pub fn accept_queue(port: u16) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        if local_port != port || *f.get(3)? != "0A" {
            return None;
        }
        u32::from_str_radix(f.get(4)?.rsplit(':').next()?, 16).ok()
    })
}

/// Wait until `n` clients wait in the backlog of `port`, and prove they
/// stay there: summond is not accepting them (a limit holds them there).
/// Seeing `n` right after `connect` proves nothing (summond may not have
/// had its turn yet), so summond is then made to take two turns of its
/// loop (`loop_turns`) and the queue must still hold `n`: a listener that
/// was readable before the first turn has been served by the end of the
/// second, had summond been going to accept.
pub fn wait_in_backlog(port: u16, n: u32) -> bool {
    if !wait_until(TIMEOUT, || accept_queue(port) == Some(n)) {
        return false;
    }
    let Some(pid) = listener_owner(port) else {
        panic!("no process listens on 127.0.0.1:{port}");
    };
    assert!(
        loop_turns(pid, 2),
        "summond (pid {pid}) did not take its signals"
    );
    accept_queue(port) == Some(n)
}

/// The process that owns the loopback TCP listener on `port`: of those
/// holding the socket, the one whose parent does not (a child that was
/// lent the listener holds it too). Found, not assumed, so it is summond
/// under `-d` and after an upgrade too.
pub fn listener_owner(port: u16) -> Option<i32> {
    let want = format!("socket:[{}]", listening_inode(port)?);
    let holds = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        })
    };
    let holders: Vec<i32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| holds(*p))
        .collect();
    holders
        .iter()
        .copied()
        .find(|p| parent_pid(*p).is_none_or(|pp| !holders.contains(&pp)))
}

/// Is `sig` pending for process `pid` as a whole (ShdPnd of its status)?
/// summond blocks the signals it handles and reads them from a signalfd,
/// so one stays pending until its loop has read it.
pub fn signal_pending(pid: i32, sig: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status.lines().find_map(|l| l.strip_prefix("ShdPnd:"))?;
    let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
    Some(mask & (1 << (sig - 1)) != 0)
}

/// Make summond's loop take `turns` turns, one after the other: each a
/// SIGCHLD (summond reaps, finds nothing new, changes nothing) and a wait
/// until its loop has read it. Every event that was ready before a turn
/// has been handled once the next turn's signal is read (one read of the
/// signalfd per wake-up, and the wake-up returns what was ready before).
pub fn loop_turns(pid: i32, turns: usize) -> bool {
    (0..turns).all(|_| {
        // SAFETY-free: kill(2) to a process this test started.
        if unsafe { nix::libc::kill(pid, nix::libc::SIGCHLD) } != 0 {
            return false;
        }
        wait_until(TIMEOUT, || {
            signal_pending(pid, nix::libc::SIGCHLD) == Some(false)
        })
    })
}

/// Nothing has arrived on `sock` (a non-blocking read finds its queue
/// empty). After `loop_turns` this says "no answer": loopback delivers
/// an answer into the queue before the sender's sendto returns.
pub fn no_datagram_waiting(sock: &UdpSocket) -> bool {
    sock.set_nonblocking(true).unwrap();
    let got = sock.recv_from(&mut [0u8; 16]);
    sock.set_nonblocking(false).unwrap();
    matches!(got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A test that cannot run here. In CI (root, IPv6 loopback, util-linux)
/// every test must run, so there a skip is a failure; elsewhere it says
/// so on stderr.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run in CI: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// The time of a log line (RFC 3339 with milliseconds, UTC) in
/// milliseconds since the Unix epoch.
pub fn log_millis(line: &str) -> u64 {
    let ts = line.split_whitespace().next().expect("timestamp");
    let (date, time) = ts
        .trim_end_matches('Z')
        .split_once('T')
        .expect("date and time");
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    // days from civil (Howard Hinnant's algorithm)
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let mut parts = time.split(':');
    let h: u64 = parts.next().unwrap().parse().unwrap();
    let min: u64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    days as u64 * 86_400_000 + (h * 3600 + min * 60) * 1000 + (s * 1000.0).round() as u64
}

/// Kills a process started outside the harness if the test fails before
/// stopping it.
/// SIGKILL to a process the test started, when the guard is dropped,
/// if that process is still there: the pid and its start time are read
/// when the guard is made, so a pid reused since by someone else's
/// process (the test may already have reaped its own) is never killed.
pub struct KillOnDrop {
    pid: i32,
    start: Option<u64>,
}

impl KillOnDrop {
    pub fn new(pid: i32) -> KillOnDrop {
        KillOnDrop {
            pid,
            start: start_time(pid),
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.start.is_some()
            && start_time(self.pid) == self.start
            && matches!(proc_state(self.pid), Some(s) if s != 'Z')
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A process's start time (clock ticks since boot, /proc/PID/stat field
/// 22): with the pid, it names one process for the life of the machine.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the state follows the ")" that closes the command name
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

impl Drop for Summond {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = unsafe { nix::libc::kill(self.pid(), nix::libc::SIGTERM) };
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- summond log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Run summond to completion with `args` (for --check and failing starts).
pub fn run_to_exit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run summond");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_all(mut r: impl Read) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub fn connect_tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Connect, send `input`, half-close, read until EOF.
pub fn tcp_exchange(addr: impl Into<SocketAddr>, input: &[u8]) -> String {
    let mut s = connect_tcp(addr.into());
    s.write_all(input).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_all(s)
}

pub fn tcp_port_exchange(port: u16, input: &[u8]) -> String {
    tcp_exchange(SocketAddr::from(([127, 0, 0, 1], port)), input)
}

pub fn unix_exchange(path: &Path, input: &[u8]) -> String {
    let mut s =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(input).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_all(s)
}

pub fn abstract_exchange(name: &str, input: &[u8]) -> String {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut s = UnixStream::connect_addr(&addr).unwrap_or_else(|e| panic!("connect @{name}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(input).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_all(s)
}

/// Send one datagram from a fresh socket and wait for one reply.
pub fn udp_exchange(port: u16, payload: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.send_to(payload, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Connect and expect the server to close without a byte: a refusal.
pub fn closed_at_once(port: u16) -> bool {
    let mut s = connect_tcp(SocketAddr::from(([127, 0, 0, 1], port)));
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// Does process `pid` hold the server end of `client`'s loopback TCP
/// connection open? (The ESTABLISHED row of /proc/net/tcp whose remote
/// port is the client's names the socket inode; `pid` has it as an fd.)
pub fn holds_connection(pid: i32, client: &TcpStream) -> bool {
    let client_port = client.local_addr().unwrap().port();
    let server_port = client.peer_addr().unwrap().port();
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // Both ports: another test's connection may have this client's port
    // at its far end (a server on a port that is ephemeral here).
    let port = |field: Option<&&str>| u16::from_str_radix(field?.rsplit(':').next()?, 16).ok();
    let inode = text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let ours = port(f.get(1)) == Some(server_port) && port(f.get(2)) == Some(client_port);
        (ours && *f.get(3)? == "01").then(|| f.get(9).map(|s| s.to_string()))?
    });
    let Some(inode) = inode else {
        return false;
    };
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        })
        .unwrap_or(false)
}

/// Read one line.
pub fn read_line(s: &TcpStream) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).unwrap();
    line
}

/// `KEY=value` lines → the value of `key`.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Connect to 127.0.0.1:`port` from the loopback address `from` (any of
/// 127.0.0.0/8 works on Linux without configuration).
pub fn connect_from(from: [u8; 4], port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)).into(), TIMEOUT)
        .unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `RssAnon`, `RssFile`…).
pub fn proc_status_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A config's `[daemon]` table naming `control` as the control socket.
pub fn daemon_control(control: &Path) -> String {
    format!("[daemon]\ncontrol = \"{}\"\n", control.display())
}

/// `summond status --json` through the control socket at `control`.
pub fn status_json(control: &Path) -> serde_json::Value {
    let (code, out, err) =
        run_to_exit(&["status", "--control", control.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The status JSON of a summond running as another uid, read by the test
/// itself (root, whom summond answers): `summond status` rightly refuses
/// a control socket made by a uid that is neither root nor its own.
pub fn status_json_of_other_uid(control: &Path) -> serde_json::Value {
    let s = std::os::unix::net::UnixStream::connect(control).expect("connect control");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    serde_json::from_str(&read_all(&s)).unwrap()
}

/// The sockfs inode of the one Unix stream socket listening on `path`
/// (a row of /proc/net/unix with the listening flag, __SO_ACCEPTCON);
/// None if there is none or more than one.
pub fn unix_listener_inode(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    let want = path.to_str()?;
    let rows: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(7) == Some(&want) && f.get(3) == Some(&"00010000")).then(|| f[6].to_string())
        })
        .collect();
    match rows.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The inode of the socket listening on loopback `port` (TCP, v4 or v6).
pub fn listening_inode(port: u16) -> Option<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let p = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
                (p == port && *f.get(3)? == "0A").then(|| f[9].to_string())
            })
        })
}

/// A duplicate of process `pid`'s fd for the socket with `inode`, taken
/// with pidfd_getfd(2) (the test started summond, so it may), to read
/// the options summond set on it.
pub fn socket_of(pid: i32, inode: &str) -> socket2::Socket {
    use std::os::fd::FromRawFd;
    let want = format!("socket:[{inode}]");
    let fd: i32 = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("pid {pid} has no fd for {want}"));
    // SAFETY: plain syscalls; the returned fds are checked and owned below.
    unsafe {
        let pidfd = nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let dup = nix::libc::syscall(nix::libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        let err = std::io::Error::last_os_error();
        nix::libc::close(pidfd);
        assert!(dup >= 0, "pidfd_getfd: {err}");
        socket2::Socket::from_raw_fd(dup)
    }
}

/// The backlog a listening TCP socket was given (TCP_INFO's tcpi_sacked
/// holds it for a listener).
pub fn listen_backlog(s: &socket2::Socket) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info: nix::libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<nix::libc::tcp_info>() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        nix::libc::getsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            (&mut info as *mut nix::libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_sacked
}

/// What it takes to run summond as an unprivileged user under
/// RLIMIT_NPROC (root ignores the limit): the setpriv wrapper arguments
/// and the soft limit that leaves room for summond and `children`
/// children. The limit counts every process of the real uid, so the uid
/// is one of the test's own that no process has (not `nobody`, whose
/// processes parallel tests start and stop while this one counts): room
/// is then exactly 1 + `children`. `None` (with a skip line) where this
/// cannot run: not root, or no setpriv.
pub fn as_nobody_with_room_for(test: &str, children: u64) -> Option<(Vec<String>, u64)> {
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/bin/setpriv").exists() {
        skip(test, "needs root (to change uid) and setpriv");
        return None;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let uid = unused_uid();
    let wrapper = vec![
        "/usr/bin/setpriv".to_string(),
        format!("--reuid={uid}"),
        format!("--regid={}", nobody.gid.as_raw()),
        "--clear-groups".to_string(),
    ];
    Some((wrapper, 1 + children))
}

/// A uid no account names and no process runs as, different for each
/// call (this process's pid and a counter pick it; one taken is skipped).
fn unused_uid() -> u32 {
    static N: AtomicUsize = AtomicUsize::new(0);
    let in_use = |uid: u32| {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
            .any(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid)
    };
    for _ in 0..1000 {
        let n = N.fetch_add(1, Ordering::SeqCst) as u32;
        let uid = 1_000_000 + (std::process::id() % 100_000) * 64 + n % 64;
        let named = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .is_some();
        if !named && !in_use(uid) {
            return uid;
        }
    }
    panic!("no unused uid found");
}

/// Ask the bus at `bus` (a D-Bus address) `method` of org.freedesktop.DBus
/// with the real dbus-send: (succeeded, stdout + stderr).
pub fn dbus_call(bus: &str, method: &str) -> (bool, String) {
    let out = Command::new("/usr/bin/dbus-send")
        .args([
            &format!("--bus={bus}"),
            "--print-reply",
            "--reply-timeout=5000",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            &format!("org.freedesktop.DBus.{method}"),
        ])
        .output()
        .expect("run dbus-send");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A fresh copy of the real binary at `dir/summond`, so an upgrade can
/// replace it without touching the build's.
pub fn install_real(dir: &Path) -> PathBuf {
    let path = dir.join("summond");
    copy_executable(Path::new(BIN), &path);
    path
}

/// Put a copy of the program `from` at `to` (a new file renamed over the
/// old), copied by `cp`: see [`install_executable`] for why never by this
/// process.
pub fn copy_executable(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    let st = Command::new("cp")
        .arg(from)
        .arg(&tmp)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp {from:?} {tmp:?}: {st}");
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Put `content` at `path` as a new executable file renamed over the old.
/// A child process writes it: a file this process held open for writing
/// is held by every child another test thread forks in that moment, until
/// the child execs, and executing the file then fails with ETXTBSY (it
/// did in CI).
pub fn install_executable(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("new");
    let mut child = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&tmp)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run sh");
    child.stdin.take().unwrap().write_all(content).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "write {tmp:?}: {st}");
    std::fs::rename(&tmp, path).unwrap();
}

/// summond in `dir`, run from a fresh copy of the binary there (so it can
/// be upgraded in place), with a control socket there; `services` is the
/// config after `[daemon]`. Returns it with the binary's path and the
/// control socket's.
pub fn start_upgradable(
    dir: TempDir,
    services: &str,
    opts: Start<'_>,
) -> (Summond, PathBuf, PathBuf) {
    let bin = install_real(&dir.0);
    let control = dir.path("control.sock");
    let config = format!("{}{services}", daemon_control(&control));
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            binary: Some(&bin),
            ..opts
        },
    );
    (s, bin, control)
}

/// `summond upgrade` through `control`, which must return 0 once the new
/// image serves.
pub fn upgrade_ok(s: &Summond, control: &Path) {
    let (code, out, err) = run_to_exit(&["upgrade", "--control", control.to_str().unwrap()]);
    assert_eq!(code, 0, "upgrade: {out}{err}\n{}", s.log_text());
}

/// TCP_DEFER_ACCEPT of the loopback TCP listener on `port` as process
/// `pid` holds it (seconds, as the kernel reports them; 0 when unset),
/// read on a copy of its fd (pidfd_getfd: the test's own child, or root).
pub fn listener_defer_accept(pid: i32, port: u16) -> Option<i32> {
    listener_sockopt(
        pid,
        port,
        nix::libc::IPPROTO_TCP,
        nix::libc::TCP_DEFER_ACCEPT,
    )
}

/// An int socket option (`level`, `name`) of the loopback TCP listener on
/// `port` as process `pid` holds it, read as `listener_defer_accept` does.
pub fn listener_sockopt(pid: i32, port: u16, level: i32, name: i32) -> Option<i32> {
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let fd = fd_of_socket(pid, &listening_inode(port)?)?;
    let own = |fd: libc::c_long| (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) });
    // SAFETY: plain syscalls; each fd returned is owned at once.
    let pidfd = own(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    let copy = own(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    let mut value: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            copy.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// Is the fd link `link` (`socket:[INODE]`) a netlink socket? summond
/// keeps one for forward mode's uid lookups (sock_diag) once its first
/// relayed client is checked: not a client's, so leak counts leave it out.
pub fn is_netlink(link: &str) -> bool {
    let Some(inode) = link
        .strip_prefix("socket:[")
        .and_then(|r| r.strip_suffix(']'))
    else {
        return false;
    };
    std::fs::read_to_string("/proc/net/netlink").is_ok_and(|t| {
        t.lines()
            .skip(1)
            .any(|l| l.split_whitespace().last() == Some(inode))
    })
}
