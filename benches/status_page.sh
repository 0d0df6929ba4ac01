#!/usr/bin/env bash
# The status page (`GET /` on the metrics listener) against the metrics
# page (`GET /metrics`) of the same summond in the same run, with N
# services (default 1,000): curl's time to the whole answer and its size,
# the two asked alternately, medians of ROUNDS rounds.
#
#   benches/status_page.sh [ROUNDS] [N]
#
# Every service listens on a Unix socket in a temporary directory; the
# metrics listener on a free loopback port. The summond started here is
# stopped by its pid.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/benches/lib.sh"
ROUNDS="${1:-11}"
N="${2:-1000}"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin summond
BIN="$ROOT/target/release/summond"
WORK="$(mktemp -d)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

PORT=$(free_ports 1)
mkdir -p "$WORK/s"
{
    printf '[daemon]\nmetrics = "tcp://127.0.0.1:%d"\nmax_children = 100000\n' "$PORT"
    for i in $(seq 0 $((N - 1))); do
        printf '[[service]]\nname = "s%d"\nlisten = "unix://%s/s/%d.sock"\nexec = ["cat"]\n' "$i" "$WORK" "$i"
    done
} >"$WORK/summond.toml"
"$BIN" -c "$WORK/summond.toml" --log-level warn 2>"$WORK/log" &
PID=$!
for _ in $(seq 1 600); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/metrics" && break
    sleep 0.1
done

page_us=() metrics_us=()
for _ in $(seq 1 "$ROUNDS"); do
    for path in / /metrics; do
        read -r t size code < <(curl -s -o /dev/null -w '%{time_total} %{size_download} %{http_code}\n' "http://127.0.0.1:$PORT$path")
        [ "$code" = 200 ] || { echo "$path: HTTP $code" >&2; cat "$WORK/log" >&2; exit 1; }
        us=$(awk -v t="$t" 'BEGIN {printf "%d", t * 1e6}')
        if [ "$path" = / ]; then page_us+=("$us"); page_size=$size; else metrics_us+=("$us"); metrics_size=$size; fi
    done
done
kill "$PID" && wait "$PID" || true
PID=""
p=$(printf '%s\n' "${page_us[@]}" | median)
m=$(printf '%s\n' "${metrics_us[@]}" | median)
echo "$N services, $ROUNDS rounds, medians: status page ${p} µs, ${page_size} bytes; /metrics ${m} µs, ${metrics_size} bytes; time ratio $(awk -v a="$p" -v b="$m" 'BEGIN {printf "%.2f", a / b}'), size ratio $(awk -v a="$page_size" -v b="$metrics_size" 'BEGIN {printf "%.2f", a / b}')"
echo "status page rounds (µs): ${page_us[*]}"
echo "/metrics rounds (µs): ${metrics_us[*]}"
