#!/usr/bin/env bash
# What a PROXY header costs summond: the same service (`/bin/echo hello`)
# twice in one summond, one plain and one with `proxy_protocol = "v2"`,
# loaded alternately by the same client (examples/loadgen.rs, which sends
# a v2 header with LOADGEN_PROXY=v2) in the same minutes, which goes
# first alternating from round to round (a machine whose load drifts
# would otherwise favour one); summond's own CPU per connection
# (nanoseconds on CPU from /proc/PID/schedstat, which counts what clock
# ticks would round away) for each, and the median over ROUNDS rounds of
# each and of the per-round ratio. SPEC's goal: at most 1.05.
#
#   benches/proxy.sh [SECONDS_PER_RUN] [ROUNDS] [CONCURRENCY]
#
# BASE=/path/to/summond runs that build too (its own two services, the
# same config) in the same rounds, for an A/B of the ratio in one run.
#
# Everything binds 127.0.0.1; summond is stopped by its pid.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-3}"
ROUNDS="${2:-3}"
CONC="${3:-16}"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin summond --example loadgen
BIN="$ROOT/target/release/summond"
LOAD="$ROOT/target/release/examples/loadgen"
WORK="$(mktemp -d)"
PID=""
BPID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  [ -n "$BPID" ] && kill "$BPID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
cpu_ns() { awk '{print $1}' "/proc/$1/schedstat"; }

read -r plain proxied bplain bproxied <<<"$(free_ports 4)"
# config PLAIN_PORT PROXIED_PORT
config() {
  cat <<TOML
[daemon]
max_children = 4096
[[service]]
name = "plain"
listen = "tcp://127.0.0.1:$1"
exec = ["/bin/echo", "hello"]
[[service]]
name = "proxied"
listen = "tcp://127.0.0.1:$2"
exec = ["/bin/echo", "hello"]
proxy_protocol = "v2"
proxy_from = ["127.0.0.0/8"]
TOML
}
config "$plain" "$proxied" > "$WORK/s.toml"
"$BIN" -c "$WORK/s.toml" --log-level warn >/dev/null 2>>"$WORK/log" &
PID=$!
until (exec 3<>"/dev/tcp/127.0.0.1/$proxied") 2>/dev/null; do sleep 0.01; done
if [ -n "${BASE:-}" ]; then
  config "$bplain" "$bproxied" > "$WORK/b.toml"
  "$BASE" -c "$WORK/b.toml" --log-level warn >/dev/null 2>>"$WORK/log" &
  BPID=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$bproxied") 2>/dev/null; do sleep 0.01; done
fi
sleep 0.5

# run PORT V2|"" [PID]: µs of summond's CPU per connection, and the load line.
run() {
  local before after out conns pid=${3:-$PID}
  before=$(cpu_ns "$pid")
  out=$(LOADGEN_PROXY="${2:-}" "$LOAD" "127.0.0.1:$1" "$CONC" "$SECS" hello)
  after=$(cpu_ns "$pid")
  conns=$(sed 's/.*conns=\([0-9]*\).*/\1/' <<<"$out")
  grep -q ' errors=0 ' <<<"$out" || echo "  errors: $out" >&2
  awk -v d=$((after - before)) -v n="$conns" 'BEGIN { printf "%.2f", n ? d / 1000 / n : 0 }'
  printf ' %s\n' "$out"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
: > "$WORK/plain"; : > "$WORK/proxied"; : > "$WORK/ratio"; : > "$WORK/bratio"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    a=$(run "$plain" ""); b=$(run "$proxied" v2)
  else
    b=$(run "$proxied" v2); a=$(run "$plain" "")
  fi
  ratio=$(awk -v p="${a%% *}" -v q="${b%% *}" 'BEGIN { printf "%.3f", q / p }')
  echo "round $r: plain ${a%% *} us/conn, v2 header ${b%% *} us/conn, ratio $ratio (c=$CONC; ${b#* })"
  echo "${a%% *}" >> "$WORK/plain"; echo "${b%% *}" >> "$WORK/proxied"; echo "$ratio" >> "$WORK/ratio"
  if [ -n "$BPID" ]; then
    if [ $((r % 2)) = 1 ]; then
      b=$(run "$bproxied" v2 "$BPID"); a=$(run "$bplain" "" "$BPID")
    else
      a=$(run "$bplain" "" "$BPID"); b=$(run "$bproxied" v2 "$BPID")
    fi
    ratio=$(awk -v p="${a%% *}" -v q="${b%% *}" 'BEGIN { printf "%.3f", q / p }')
    echo "round $r, BASE: plain ${a%% *} us/conn, v2 header ${b%% *} us/conn, ratio $ratio"
    echo "$ratio" >> "$WORK/bratio"
  fi
done
p=$(median < "$WORK/plain"); q=$(median < "$WORK/proxied")
echo "summond CPU per connection, median of $ROUNDS: plain $p us, v2 header $q us; ratio of the medians $(awk -v p="$p" -v q="$q" 'BEGIN { printf "%.3f", q / p }'), median of the ratios $(median < "$WORK/ratio")"
[ -n "$BPID" ] && echo "BASE: median of the ratios $(median < "$WORK/bratio")"
grep -c refused "$WORK/log" >/dev/null && echo "refusals logged:" && grep refused "$WORK/log" | head -3 || true
