#!/usr/bin/env bash
# summond's own figures, from the repository alone: builds summond and the
# load client (examples/loadgen.rs) in release mode, serves `/bin/echo
# hello` on a loopback port picked at run time, and measures connections/s,
# latency (connect to first byte) and summond's own CPU per connection at
# concurrency 1, 4 and 16; then the same with 1000 services configured,
# the time until all 1000 listen, and summond's idle RSS with 1 and 1000.
#
#   benches/quick.sh [SECONDS_PER_RUN]
#
# For the side-by-side comparison with xinetd, busybox inetd, tcpserver,
# systemd-socket-activate and the C ceilings, see benches/run.sh.
# Everything binds 127.0.0.1; every process started is stopped by its pid.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-3}"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin summond --example loadgen
BIN="$ROOT/target/release/summond"
LOAD="$ROOT/target/release/examples/loadgen"
WORK="$(mktemp -d)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

# start CONFIG PORTS: run summond on it, wait until every port answers;
# sets PID and LISTEN_MS.
start() {
  local t0; t0=$(date +%s%N)
  "$BIN" -c "$1" --log-level warn >/dev/null 2>>"$WORK/log" &
  PID=$!
  # summond opens its sockets in config order before it serves any, so
  # the last port listening means all do.
  local last="${2##* }"
  until (exec 3<>"/dev/tcp/127.0.0.1/$last") 2>/dev/null; do sleep 0.002; done
  LISTEN_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }

# load PORT: one loadgen run per concurrency, with summond's CPU.
load() {
  for c in 1 4 16; do
    local before after out conns
    before=$(ticks "$PID")
    out=$("$LOAD" "127.0.0.1:$1" "$c" "$SECS" hello)
    after=$(ticks "$PID")
    conns=$(sed 's/.*conns=\([0-9]*\).*/\1/' <<<"$out")
    printf '  c=%-3s %s summond_cpu_us_per_conn=%s\n' "$c" "$out" \
      "$(awk -v t=$((after - before)) -v n="$conns" -v hz="$hz" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')"
  done
}

service() { printf '[[service]]\nname = "%s"\nlisten = "tcp://127.0.0.1:%s"\nexec = ["/bin/echo", "hello"]\n\n' "$1" "$2"; }

port=$(free_ports 1)
service hello "$port" > "$WORK/one.toml"
start "$WORK/one.toml" "$port"
sleep 0.5
echo "1 service: listening after $LISTEN_MS ms, idle RSS $(rss "$PID") kB"
load "$port"
stop

ports=$(free_ports 1000)
: > "$WORK/many.toml"
i=0
for p in $ports; do
  i=$((i + 1))
  service "s$i" "$p" >> "$WORK/many.toml"
done
start "$WORK/many.toml" "$ports"
sleep 0.5
echo "1000 services: all listening after $LISTEN_MS ms, idle RSS $(rss "$PID") kB"
load "$p"
stop
