"""Load for benches/pool.sh: CONC processes each doing HTTP/1.0 GETs (a new
connection each) for SECONDS; prints `SIDE req/s failed spread` where
spread is max/min requests per server process: for the pool per
instance (a gunicorn worker's parent), for gunicorn's own per worker.

    python3 benches/pool_client.py PORT SECONDS CONC SIDE
"""
import collections, multiprocessing, socket, sys, time


def worker(port, seconds, out):
    counts, failed, n = collections.Counter(), 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0] + b" ":
                failed += 1
                continue
            counts[int(body)] += 1
            n += 1
        except OSError:
            failed += 1
    out.put((n, failed, dict(counts)))


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def main():
    port, seconds, conc, side = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(port, seconds, out)) for _ in range(conc)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - t0
    total = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    per = collections.Counter()
    for _, _, counts in results:
        for pid, k in counts.items():
            per[parent(pid) if side == "pool" else pid] += k
    spread = max(per.values()) / min(per.values()) if per else 0
    print(f"{side} {total / elapsed:.1f} {failed} {spread:.3f} instances={len(per)}")


if __name__ == "__main__":
    main()
