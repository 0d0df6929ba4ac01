#!/usr/bin/env python3
"""Figures for the service keys beyond the core, measured on the real
binary over loopback:

  rate       how closely `rate = "R/1s"` spaces new children (N clients at once)
  flood      summond's RSS after a flood of distinct client addresses against
             a per_source_rate service (the per-source table is bounded)
  internal   throughput of internal:echo and internal:chargen over TCP, and
             UDP echo round trips per second

  cargo build --release && python3 benches/parity.py [--sources 100000]

Everything binds 127.0.0.0/8 on ports picked at run time; every loop is
bounded in count and time; summond is stopped by pid at the end.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "summond")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Summond:
    def __init__(self, config, level="info"):
        self.dir = tempfile.mkdtemp(prefix="summond-parity-")
        path = os.path.join(self.dir, "c.toml")
        with open(path, "w") as f:
            f.write(config)
        self.log = os.path.join(self.dir, "log")
        self.proc = subprocess.Popen(
            [BIN, "-c", path, "--log-level", level],
            stdin=subprocess.DEVNULL,
            stderr=open(self.log, "w"),
        )
        deadline = time.time() + 10
        while " serving " not in self.text():
            if time.time() > deadline or self.proc.poll() is not None:
                sys.exit("summond did not start:\n" + self.text())
            time.sleep(0.02)

    def text(self):
        with open(self.log) as f:
            return f.read()

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bench_rate(rate=50, clients=250):
    port = free_port()
    s = Summond(
        f'[[service]]\nname = "r"\nlisten = "tcp://127.0.0.1:{port}"\n'
        f'exec = ["true"]\nrate = "{rate}/1s"\n',
        level="debug",
    )
    done = []

    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.recv(1)
            done.append(1)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stamps = []
    for line in s.text().splitlines():
        if "r: started pid" in line:
            hms = line.split()[0].split("T")[1].rstrip("Z")
            h, m, sec = hms.split(":")
            stamps.append(int(h) * 3600 + int(m) * 60 + float(sec))
    s.stop()
    span = stamps[-1] - stamps[0]
    ideal = (clients - rate) / rate
    print(
        f"rate {rate}/1s, {clients} clients at once: {len(done)} served, "
        f"{len(stamps)} children over {span:.3f} s (ideal {ideal:.3f} s, "
        f"error {100 * (span - ideal) / ideal:+.2f}%)"
    )


def bench_flood(sources):
    port = free_port()
    s = Summond(
        f'[[service]]\nname = "f"\nlisten = "tcp://127.0.0.1:{port}"\n'
        f'exec = ["internal:discard"]\nper_source_rate = "5/1m"\n',
        level="info",
    )
    idle = s.rss_kb()
    start = time.time()
    n = 0
    for i in range(sources):
        a = 1 + i
        src = f"127.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"
        with socket.socket() as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.bind((src, 0))
            c.connect(("127.0.0.1", port))
        n += 1
        if time.time() - start > 300:
            break
    time.sleep(0.5)
    after = s.rss_kb()
    s.stop()
    print(
        f"flood: {n} distinct sources in {time.time() - start:.1f} s against per_source_rate: "
        f"RSS {idle} kB idle -> {after} kB after (+{after - idle} kB)"
    )


def bench_internal(megabytes=200):
    echo, chargen, uecho = free_port(), free_port(), free_port()
    s = Summond(
        f'[[service]]\nname = "e"\nlisten = "tcp://127.0.0.1:{echo}"\nexec = ["internal:echo"]\n'
        f'[[service]]\nname = "c"\nlisten = "tcp://127.0.0.1:{chargen}"\nexec = ["internal:chargen"]\n'
        f'[[service]]\nname = "u"\nlisten = "udp://127.0.0.1:{uecho}"\nexec = ["internal:echo"]\n',
        level="info",
    )
    total = megabytes << 20
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", echo)) as c:
        got = [0]

        def reader():
            while got[0] < total:
                b = c.recv(1 << 20)
                if not b:
                    break
                got[0] += len(b)

        t = threading.Thread(target=reader)
        start = time.time()
        t.start()
        sent = 0
        while sent < total:
            c.sendall(chunk)
            sent += len(chunk)
        t.join(120)
        secs = time.time() - start
    print(f"internal:echo over TCP: {megabytes} MB through in {secs:.2f} s = {megabytes / secs:.0f} MB/s")
    with socket.create_connection(("127.0.0.1", chargen)) as c:
        start = time.time()
        got = 0
        while got < total:
            b = c.recv(1 << 20)
            if not b:
                break
            got += len(b)
        secs = time.time() - start
    print(f"internal:chargen over TCP: {got >> 20} MB read in {secs:.2f} s = {(got >> 20) / secs:.0f} MB/s")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2)
    n, start = 0, time.time()
    while time.time() - start < 3:
        u.sendto(b"ping", ("127.0.0.1", uecho))
        u.recvfrom(64)
        n += 1
    print(f"internal:echo over UDP: {n / (time.time() - start):.0f} round trips/s (one client)")
    print(f"summond RSS after: {s.rss_kb()} kB")
    s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, default=100_000)
    ap.add_argument("--only", choices=["rate", "flood", "internal"])
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    if a.only in (None, "rate"):
        bench_rate()
    if a.only in (None, "internal"):
        bench_internal()
    if a.only in (None, "flood"):
        bench_flood(a.sources)


if __name__ == "__main__":
    main()
