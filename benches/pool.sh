#!/usr/bin/env bash
# A pool behind summond beside the same program's own pre-fork, in one
# run: 4 gunicorn instances (one sync worker each, `instances = 4`,
# taking the socket from LISTEN_FDS) against one gunicorn with
# `--workers 4` on its own socket, same WSGI app (answers its pid), same
# client (benches/pool_client.py: CONC processes of HTTP/1.0 GETs, a new
# connection each, for SECONDS). Per round and side: requests/s, and for
# the pool the spread (max/min requests per instance, the worker's pid
# mapped to its instance; for gunicorn's own, per worker). Medians of
# ROUNDS rounds, sides alternated.
#
# Scheduling groups: summond starts each instance in its own session
# (`setsid`), and with kernel.sched_autogroup_enabled (Debian's default)
# each session is a group the scheduler shares CPU between, so the 4
# instances had 4 shares where gunicorn's 4 workers, in the script's
# session, had one share beside the client's: on 2 busy cores that, not
# the server, set the figure (0.74 in one run). Here each of gunicorn's
# workers gets a session of its own too (post_fork: os.setsid()), so
# both sides are 4 groups; and the servers run on CPU 0, the client on
# CPU 1 (PIN=0 to leave them free), as a client on another host would.
# OWN_SETSID=0 leaves gunicorn's workers in the script's session.
#
#   benches/pool.sh [ROUNDS] [SECONDS] [CONC]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

ROUNDS=${1:-3}
SECONDS_EACH=${2:-5}
CONC=${3:-8}
GUNICORN=$(command -v gunicorn)
PIN=${PIN:-1}
OWN_SETSID=${OWN_SETSID:-1}
server_cpu=(); client_cpu=()
if [ "$PIN" = 1 ]; then server_cpu=(taskset -c 0); client_cpu=(taskset -c 1); fi

cargo build --release --quiet --bin summond
BIN=$PWD/target/release/summond

read -r POOL OWN < <(free_ports 2)
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/app.py" <<'EOF2'
import os
def app(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [str(os.getpid()).encode()]
EOF2
cat >"$WORK/own.conf.py" <<'EOF2'
import os
def post_fork(server, worker):
    if os.environ.get("OWN_SETSID") == "1":
        os.setsid()
EOF2
cat >"$WORK/summond.toml" <<EOF2
[[service]]
name = "pool"
listen = { address = "tcp://127.0.0.1:$POOL", name = "http" }
exec = ["$GUNICORN", "--workers", "1", "--chdir", "$WORK", "app:app"]
accept = false
pass = "listen_fds"
instances = 4
start = "eager"
backlog = 1024
EOF2
"${server_cpu[@]}" "$BIN" -c "$WORK/summond.toml" --log-level warn 2>"$WORK/summond.log" &
pids+=($!)
OWN_SETSID=$OWN_SETSID "${server_cpu[@]}" "$GUNICORN" -c "$WORK/own.conf.py" --workers 4 --bind "127.0.0.1:$OWN" --backlog 1024 \
  --chdir "$WORK" app:app \
  2>"$WORK/gunicorn.log" &
pids+=($!)
# Both serve (each instance has its worker) before the first round.
for port in "$POOL" "$OWN"; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/" >/dev/null && break
    sleep 0.1
  done
done
sleep 2

for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="pool own"; else order="own pool"; fi
  for side in $order; do
    port=$POOL; [ "$side" = own ] && port=$OWN
"${client_cpu[@]}" python3 benches/pool_client.py "$port" "$SECONDS_EACH" "$CONC" "$side"
  done
done | tee "$WORK/rounds" >&2

python3 - "$WORK/rounds" <<'EOF2'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda side, i: statistics.median(float(r[i]) for r in rows if r[0] == side)
pool, own = med("pool", 1), med("own", 1)
print(f"pool of 4 behind summond: {pool:.0f} req/s; gunicorn --workers 4: {own:.0f} req/s; "
      f"ratio {pool/own:.2f}; spread (max/min per instance) {med('pool', 3):.2f}, "
      f"per gunicorn worker {med('own', 3):.2f}; failed {sum(int(r[2]) for r in rows)}")
EOF2
