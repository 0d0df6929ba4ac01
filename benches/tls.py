#!/usr/bin/env python3
"""TLS termination side by side, in one run: summond (`tls`, a program per
connection), stunnel4 with `exec=` (a program per connection), stunnel4
with `connect=` and haproxy (both to a backend server in this script),
and summond-fwd (`tls` with `forward`, to the same backend: its `exec`
is a `sleep` that stays, the script's server being the one that
accepts). TLS 1.3, an ECDSA P-256 certificate, loopback.

    benches/tls.py [--rounds 3] [--seconds 5] [--idle 400] [--bulk-mib 1024]
                   [--servers summond,...] [--main PATH]

--main PATH adds summond-main: `summond` run from another binary (a
build of main, for an A/B of the same service in the same run).

Per server, the median of the rounds (servers interleaved in each round):

- handshakes/s at c=8: 8 `openssl s_time -new -tls1_3` at once, summed
  (s_time resets each connection once its handshake is done: summond
  takes that for a health check and starts no program or backend for it,
  as haproxy connects no server for it);
- requests/s at c=8: the same with `-www /`, one request line per
  connection, which the program per connection (`head -n 1`) or the
  backend sends back before closing: a program or a backend connection
  for every client;
- CPU µs per handshake: the server process's own user+system time over
  that run (/proc/PID/stat; children not counted) per handshake;
- bulk MB/s down and up: one socat TLS client reading (down) or writing
  (up) --bulk-mib MiB; the program behind is `head -c N /dev/zero` or
  `cat > /dev/null` (a backend of this script's for connect= and haproxy);
- KiB per idle TLS connection: the server process's RSS after --idle
  clients finished their handshakes and sit idle, minus before, over N.

Needs summond's release build (cargo build --release), haproxy, stunnel4,
socat, openssl and python3. Ratios within one run mean more than the
absolute numbers (the machine is shared).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMOND = os.path.join(ROOT, "target", "release", "summond")
TICK = os.sysconf("SC_CLK_TCK")
MAIN = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, **kw):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def make_certs(d):
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA", cwd=d)
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext", cwd=d)
    os.chmod(os.path.join(d, "server.key"), 0o600)
    with open(os.path.join(d, "haproxy.pem"), "w") as out:
        for name in ("server.pem", "server.key"):
            out.write(open(os.path.join(d, name)).read())


class Backend:
    """A plain TCP server in this process for connect= and haproxy: per
    connection a thread that holds (until EOF), discards, or sends."""

    def __init__(self, mode, size=0):
        self.mode, self.size = mode, size
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(c,), daemon=True).start()

    def one(self, c):
        try:
            if self.mode == "req":
                line = b""
                while b"\n" not in line:
                    got = c.recv(4096)
                    if not got:
                        break
                    line += got
                c.sendall(line.split(b"\n")[0] + b"\n")
            elif self.mode == "down":
                block = bytes(1 << 20)
                left = self.size
                while left > 0:
                    n = min(left, len(block))
                    c.sendall(block[:n])
                    left -= n
            else:
                while c.recv(1 << 20):
                    pass
        except OSError:
            pass
        c.close()

    def close(self):
        self.sock.close()


def program(mode, size):
    """What a program per connection runs for `mode`."""
    if mode == "down":
        return ["/usr/bin/head", "-c", str(size), "/dev/zero"]
    if mode == "req":
        return ["/usr/bin/head", "-n", "1"]
    if mode == "hold":
        # The handshake clients send nothing: cat reads to their EOF and
        # exits, one exec per connection.
        return ["/bin/cat"]
    return ["/bin/sh", "-c", "cat > /dev/null"]


class Server:
    def __init__(self, kind, d, mode, size):
        self.kind, self.d = kind, d
        self.backend = None
        # A port picked free can be taken again before the server binds it
        # (the clients' own ephemeral ports are in the same range): a
        # server that exits at once is started again on another.
        for _ in range(5):
            self.port = free_port()
            self.proc = getattr(self, "start_" + kind.replace("-", "_"))(mode, size)
            if self.wait_listening():
                break
            self.stop()
        time.sleep(0.2)

    def wait_listening(self):
        deadline = time.time() + 10
        while time.time() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def start_summond(self, mode, size, binary=None, forward=None):
        exec_ = ", ".join('"%s"' % a for a in program(mode, size))
        more = ""
        if forward:
            exec_ = '"/bin/sleep", "infinity"'
            more = 'forward = "tcp://127.0.0.1:%d"\nmax_instances = 4096\n' % forward
        conf = os.path.join(self.d, "summond.toml")
        with open(conf, "w") as f:
            f.write('[daemon]\nmax_children = 4096\n[[service]]\nname = "t"\n'
                    'listen = "tcp://127.0.0.1:%d"\nexec = [%s]\n%s'
                    'tls = { cert = "%s/server.pem", key = "%s/server.key" }\n'
                    % (self.port, exec_, more, self.d, self.d))
        return subprocess.Popen([binary or SUMMOND, "-c", conf, "--log-level", "warn"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_summond_main(self, mode, size):
        return self.start_summond(mode, size, binary=MAIN)

    def start_summond_fwd(self, mode, size):
        self.backend = Backend(mode, size)
        return self.start_summond(mode, size, forward=self.backend.port)

    def stunnel(self, target):
        conf = os.path.join(self.d, "stunnel.conf")
        with open(conf, "w") as f:
            f.write("foreground = yes\npid =\nsyslog = no\ndebug = 0\n[t]\n"
                    "accept = 127.0.0.1:%d\ncert = %s/server.pem\nkey = %s/server.key\n%s"
                    % (self.port, self.d, self.d, target))
        return subprocess.Popen(["stunnel4", conf], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def start_stunnel_exec(self, mode, size):
        # stunnel splits execArgs at spaces: the same programs, written so.
        if mode == "down":
            target = "exec = /usr/bin/head\nexecArgs = head -c %d /dev/zero\n" % size
        elif mode == "req":
            target = "exec = /usr/bin/head\nexecArgs = head -n 1\n"
        elif mode == "hold":
            target = "exec = /bin/cat\nexecArgs = cat\n"
        else:
            target = "exec = /bin/sh\nexecArgs = sh -c cat>/dev/null\n"
        return self.stunnel(target)

    def start_stunnel_connect(self, mode, size):
        self.backend = Backend(mode, size)
        return self.stunnel("connect = 127.0.0.1:%d\n" % self.backend.port)

    def start_haproxy(self, mode, size):
        self.backend = Backend(mode, size)
        conf = os.path.join(self.d, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write("global\n  maxconn 8000\n  log stderr format raw local0 emerg\n"
                    "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n"
                    "  timeout server 120s\n"
                    "frontend f\n  bind 127.0.0.1:%d ssl crt %s/haproxy.pem\n"
                    "  default_backend b\nbackend b\n  server s 127.0.0.1:%d\n"
                    % (self.port, self.d, self.backend.port))
        return subprocess.Popen(["haproxy", "-db", "-f", conf], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def cpu_ticks(self):
        f = open("/proc/%d/stat" % self.proc.pid).read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])

    def rss_kib(self):
        for line in open("/proc/%d/status" % self.proc.pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.backend:
            self.backend.close()
            self.backend = None


def handshakes(srv, d, seconds, www=()):
    before = srv.cpu_ticks()
    procs = [subprocess.Popen(["openssl", "s_time", "-connect", "127.0.0.1:%d" % srv.port,
                               "-new", "-tls1_3", "-time", str(seconds), "-CAfile",
                               os.path.join(d, "ca.pem"), *www],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(8)]
    total = 0
    for p in procs:
        out, _ = p.communicate()
        for line in out.splitlines():
            if "connections in" in line and "real seconds" in line:
                total += int(line.split()[0])
    cpu_us = (srv.cpu_ticks() - before) * 1e6 / TICK
    return total / seconds, (cpu_us / total if total else float("nan"))


def socat_tls(port):
    return "OPENSSL:127.0.0.1:%d,verify=0,openssl-min-proto-version=TLS1.3" % port


def bulk(srv, mode, size):
    t0 = time.time()
    if mode == "down":
        subprocess.run(["socat", "-b", "65536", "-u", socat_tls(srv.port), "OPEN:/dev/null"],
                       check=False, stderr=subprocess.DEVNULL, timeout=300)
    else:
        feed = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
        subprocess.run(["socat", "-b", "65536", "-u", "STDIN", socat_tls(srv.port)],
                       stdin=feed.stdout, check=False, stderr=subprocess.DEVNULL, timeout=300)
        feed.wait()
    return size / 1e6 / (time.time() - t0)


IDLE_CLIENT = r"""
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
held = []
for _ in range(int(sys.argv[2])):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    held.append(ctx.wrap_socket(s, server_hostname="localhost"))
print("ready", flush=True)
sys.stdin.read()
"""


def idle(srv, d, n):
    warm = subprocess.run([sys.executable, "-c", IDLE_CLIENT, str(srv.port), "1",
                           os.path.join(d, "ca.pem")], input="", capture_output=True, text=True)
    time.sleep(0.5)
    before = srv.rss_kib()
    p = subprocess.Popen([sys.executable, "-c", IDLE_CLIENT, str(srv.port), str(n),
                          os.path.join(d, "ca.pem")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    ready = p.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    after = srv.rss_kib()
    p.stdin.close()
    p.wait()
    del warm
    return (after - before) / n if ready else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--idle", type=int, default=400)
    ap.add_argument("--bulk-mib", type=int, default=1024)
    ap.add_argument("--servers",
                    default="summond,summond-fwd,stunnel-exec,stunnel-connect,haproxy")
    ap.add_argument("--main", help="another summond binary, run as summond-main")
    a = ap.parse_args()
    global MAIN
    MAIN = a.main
    if MAIN and "summond-main" not in a.servers:
        a.servers = "summond-main," + a.servers
    for tool in ("openssl", "socat", "haproxy", "stunnel4"):
        if not shutil.which(tool):
            sys.exit("needs " + tool)
    if not os.path.exists(SUMMOND):
        sys.exit("needs " + SUMMOND + " (cargo build --release)")
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = a.servers.split(",")
    size = a.bulk_mib << 20
    results = {s: {k: [] for k in ("hs", "cpu", "req", "down", "up", "idle")}
               for s in servers}
    d = tempfile.mkdtemp(prefix="summond-tls-bench.")
    os.chmod(d, 0o755)
    try:
        make_certs(d)
        for r in range(a.rounds):
            for s in servers:
                res = results[s]
                srv = Server(s, d, "hold", 0)
                hs, cpu = handshakes(srv, d, a.seconds)
                res["hs"].append(hs)
                res["cpu"].append(cpu)
                res["idle"].append(idle(srv, d, a.idle))
                srv.stop()
                srv = Server(s, d, "req", 0)
                res["req"].append(handshakes(srv, d, a.seconds, ("-www", "/"))[0])
                srv.stop()
                for mode in ("down", "up"):
                    srv = Server(s, d, mode, size)
                    res[mode].append(bulk(srv, mode, size))
                    srv.stop()
                print("round %d %-16s hs/s %7.0f  cpu us/hs %6.0f  req/s %7.0f  MB/s down %6.0f "
                      "up %6.0f  KiB/idle %6.1f" % (r + 1, s, hs, cpu, res["req"][-1],
                                                    res["down"][-1], res["up"][-1],
                                                    res["idle"][-1]), flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print("\nmedians of %d rounds" % a.rounds)
    print("| server | handshakes/s (c=8) | CPU µs per handshake | requests/s (c=8) "
          "| MB/s down / up | KiB per idle connection |")
    print("|---|---|---|---|---|---|")
    for s in servers:
        m = {k: statistics.median(v) for k, v in results[s].items()}
        print("| %s | %.0f | %.0f | %.0f | %.0f / %.0f | %.1f |"
              % (s, m["hs"], m["cpu"], m["req"], m["down"], m["up"], m["idle"]))


if __name__ == "__main__":
    main()
