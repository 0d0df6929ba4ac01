//! Pools: `instances = N` on an `accept = false` service, with Debian's
//! gunicorn (one worker each, taking the sockets from LISTEN_FDS by
//! itself and saying READY=1 on its NOTIFY_SOCKET) serving a WSGI app that
//! answers its pid.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

const TIMEOUT: Duration = Duration::from_secs(20);
const GUNICORN: &str = "/usr/bin/gunicorn";
const APP: &str = "import os\n\
def app(environ, start_response):\n    \
    start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
    return [str(os.getpid()).encode()]\n";

/// A service of `instances` gunicorns (one sync worker each) on `port`.
fn pool_config(dir: &TempDir, control: &Path, port: u16, instances: u32, extra: &str) -> String {
    std::fs::write(dir.path("app.py"), APP).unwrap();
    format!(
        "{}[[service]]\nname = \"pool\"\nlisten = \"tcp://127.0.0.1:{port}\"\naccept = false\n\
         pass = \"listen_fds\"\ninstances = {instances}\n{extra}\
         exec = [\"{GUNICORN}\", \"--workers\", \"1\", \"--chdir\", {}, \"app:app\"]\n",
        daemon_control(control),
        toml_str(&dir.0.display().to_string())
    )
}

/// One request; the pid of the worker that answered it.
fn get(port: u16) -> Option<i32> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(TIMEOUT)).ok()?;
    c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    if !answer.starts_with("HTTP/1.0 200") && !answer.starts_with("HTTP/1.1 200") {
        return None;
    }
    answer.rsplit("\r\n\r\n").next()?.trim().parse().ok()
}

/// Kill these gunicorns and their workers when the test ends (a worker
/// outlives its arbiter's SIGKILL until it sees it gone).
fn guard(arbiters: impl IntoIterator<Item = i32>) -> Vec<KillOnDrop> {
    arbiters
        .into_iter()
        .flat_map(|p| std::iter::once(p).chain(children_of(p)))
        .map(KillOnDrop::new)
        .collect()
}

/// The instances status shows: (pid, ready).
fn instances(control: &Path) -> Vec<(i32, bool)> {
    let st = status_json(control);
    st["services"][0]["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| (i["pid"].as_i64().unwrap() as i32, i["ready"] == true))
                .collect()
        })
        .unwrap_or_default()
}

fn all_ready(control: &Path, n: usize) -> bool {
    let i = instances(control);
    i.len() == n && i.iter().all(|(_, r)| *r)
}

/// Requests spread over 4 instances; one killed with SIGKILL is replaced
/// while the others serve, and no request fails meanwhile.
#[test]
fn a_pool_of_gunicorns_shares_the_load_and_survives_a_kill() {
    if !Path::new(GUNICORN).exists() {
        return skip("pools gunicorn", "gunicorn is not installed");
    }
    let port = free_port();
    let dir = TempDir::new("pool");
    let control = dir.path("control.sock");
    let config = pool_config(&dir, &control, port, 4, "");
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    // Nothing runs before the first client.
    assert!(instances(&control).is_empty());
    assert!(get(port).is_some(), "{}", s.log_text());
    assert!(
        wait_until(TIMEOUT, || all_ready(&control, 4)),
        "{}\n{}",
        status_json(&control),
        s.log_text()
    );
    let pool: HashSet<i32> = instances(&control).iter().map(|(p, _)| *p).collect();
    // Each instance has its own LISTEN_PID (gunicorn checked it: it took
    // the socket) and every socket.
    let served = requests(port, 8, 400);
    let mut per_instance: HashMap<i32, usize> = HashMap::new();
    for worker in served {
        let arbiter = parent_pid(worker).expect("a worker still running");
        *per_instance.entry(arbiter).or_default() += 1;
    }
    assert_eq!(
        per_instance.keys().copied().collect::<HashSet<_>>(),
        pool,
        "{per_instance:?}"
    );

    // Kill one under load: the others hold the socket.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failed) = (stop.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 100_000 {
                    if get(port).is_none() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let _kill = guard(pool.iter().copied());
    let victim = *pool.iter().next().unwrap();
    assert!(wait_until(TIMEOUT, || failed.load(Ordering::Relaxed) == 0));
    unsafe { nix::libc::kill(victim, nix::libc::SIGKILL) };
    let replaced = wait_until(TIMEOUT, || {
        let now = instances(&control);
        now.len() == 4 && now.iter().all(|(p, r)| *r && *p != victim)
    });
    stop.store(true, Ordering::Relaxed);
    let total: usize = load.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(replaced, "{}\n{}", status_json(&control), s.log_text());
    let _new = guard(instances(&control).iter().map(|(p, _)| *p));
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {total} requests\n{}",
        s.log_text()
    );
}

/// `n` requests over `threads` clients at once: the pids that answered.
fn requests(port: u16, threads: usize, n: usize) -> Vec<i32> {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                (0..n / threads)
                    .map(|_| get(port).expect("a request failed"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// `start = "eager"`: the pool runs before any client; a reload that keeps
/// the service keeps it; `summond restart` replaces every instance.
#[test]
fn an_eager_pool_starts_with_summond_survives_a_reload_and_restarts_whole() {
    if !Path::new(GUNICORN).exists() {
        return skip("pools eager", "gunicorn is not installed");
    }
    let (port, other) = (free_port(), free_port());
    let dir = TempDir::new("pooleager");
    let control = dir.path("control.sock");
    let config = pool_config(&dir, &control, port, 2, "start = \"eager\"\n");
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    assert!(
        wait_until(TIMEOUT, || all_ready(&control, 2)),
        "{}\n{}",
        status_json(&control),
        s.log_text()
    );
    let before = instances(&control);
    assert!(get(port).is_some());
    let _kill = guard(before.iter().map(|(p, _)| *p));
    let more = format!(
        "{config}[[service]]\nname = \"echo\"\nlisten = \"tcp://127.0.0.1:{other}\"\nexec = [\"cat\"]\n"
    );
    assert!(s.reload(&more), "{}", s.log_text());
    assert_eq!(instances(&control), before);
    assert!(get(port).is_some());

    let (code, out, err) =
        run_to_exit(&["restart", "pool", "--control", control.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let old: HashSet<i32> = before.iter().map(|(p, _)| *p).collect();
    // Eager: started again without a client.
    assert!(
        wait_until(TIMEOUT, || {
            let now = instances(&control);
            now.len() == 2 && now.iter().all(|(p, r)| *r && !old.contains(p))
        }),
        "{}\n{}",
        status_json(&control),
        s.log_text()
    );
    assert!(get(port).is_some());
    let _new = guard(instances(&control).iter().map(|(p, _)| *p));
}
