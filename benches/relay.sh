#!/usr/bin/env bash
# Relays side by side in one run: summond's forward mode beside haproxy
# (tcp mode, splice), systemd-socket-proxyd and socat, and a direct
# connection, all between the same client and the same backend
# (examples/relaybench.rs; the backend is the one summond starts on
# demand). Per relay, the median of ROUNDS rounds of:
#   MB/s up and down for one long transfer (BYTES each way),
#   the relay's CPU s per GiB moved (both directions' bytes),
#   p50/p99 of 64-byte request/reply round trips, and what the relay adds
#   to the direct p99,
#   the relay's CPU µs per new connection (CONNS connections, 4 at a time);
# and summond's cold start: the first client's wait (connect to first
# byte, the backend stopped by idle_stop) minus the backend's own start
# time (started directly, connected to every 50 µs until it answers a
# first byte as it does through the relay).
# The relay's CPU is utime+stime+cutime+cstime of its process
# (/proc/PID/stat; socat's forked children are in cutime once reaped).
# "box CPU s/GiB" is the whole machine's busy time (/proc/stat) per GiB
# over the same transfers: for `direct`, what the client and the backend
# cost, so the last line can say what CPU per GiB a relay may use at most
# to reach 0.9x direct on this machine's CPUs if they are saturated.
#
#   benches/relay.sh [ROUNDS] [BYTES] [CONNS]
#
# BASE=/path/to/summond adds that build as "summond-base" (its own
# backend, same config) beside this tree's, for an A/B in one run;
# ONLY="summond summond-base" runs just those.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

ROUNDS=${1:-3}
BYTES=${2:-$((2 << 30))}
CONNS=${3:-4000}
RTTS=20000

cargo build --release --quiet --bin summond --example relaybench
BIN=$PWD/target/release/summond
RB=$PWD/target/release/examples/relaybench
HZ=$(getconf CLK_TCK)
PROXYD=$(command -v systemd-socket-proxyd || echo /lib/systemd/systemd-socket-proxyd)

read -r BACK SUMMOND HAPROXY PROXYD_PORT SOCAT COLD COLD_BACK OWN_BACK BASE_PORT BASE_BACK < <(free_ports 10)
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/summond.toml" <<EOF
[[service]]
name = "relay"
listen = "tcp://127.0.0.1:$SUMMOND"
exec = ["$RB", "serve", "$BACK"]
forward = "tcp://127.0.0.1:$BACK"

[[service]]
name = "cold"
listen = "tcp://127.0.0.1:$COLD"
exec = ["$RB", "serve", "$COLD_BACK"]
forward = "tcp://127.0.0.1:$COLD_BACK"
idle_stop = "200ms"
EOF
"$BIN" -c "$WORK/summond.toml" --log-level warn 2>"$WORK/summond.log" &
pids+=($!)
SUMMOND_PID=$!
BASE_PID=
if [ -n "${BASE:-}" ]; then
  cat >"$WORK/base.toml" <<EOF
[[service]]
name = "relay"
listen = "tcp://127.0.0.1:$BASE_PORT"
exec = ["$RB", "serve", "$BASE_BACK"]
forward = "tcp://127.0.0.1:$BASE_BACK"
EOF
  "$BASE" -c "$WORK/base.toml" --log-level warn 2>"$WORK/base.log" &
  pids+=($!)
  BASE_PID=$!
fi

cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  option splice-auto
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen relay
  bind 127.0.0.1:$HAPROXY
  server backend 127.0.0.1:$BACK
EOF
haproxy -f "$WORK/haproxy.cfg" -db 2>"$WORK/haproxy.log" &
pids+=($!)
HAPROXY_PID=$!

# systemd-socket-proxyd takes its listening socket by socket activation;
# systemd-socket-activate execs it in place (same pid).
systemd-socket-activate -l "127.0.0.1:$PROXYD_PORT" "$PROXYD" "127.0.0.1:$BACK" 2>"$WORK/proxyd.log" &
pids+=($!)
PROXYD_PID=$!

socat "TCP-LISTEN:$SOCAT,bind=127.0.0.1,reuseaddr,fork,backlog=4096" "TCP:127.0.0.1:$BACK" 2>"$WORK/socat.log" &
pids+=($!)
SOCAT_PID=$!

# The first client starts the backend through summond; the others find it.
for _ in $(seq 100); do
  "$RB" conns "127.0.0.1:$SUMMOND" 1 1 >/dev/null 2>&1 && break
  sleep 0.05
done
for _ in $(seq 100); do
  [ -z "$BASE_PID" ] && break
  "$RB" conns "127.0.0.1:$BASE_PORT" 1 1 >/dev/null 2>&1 && break
  sleep 0.05
done

cpu_ticks() { # utime stime cutime cstime of $1
  [ -z "$1" ] && { echo 0; return; }
  awk '{ s = $0; sub(/.*\) /, "", s); split(s, f, " "); print f[12] + f[13] + f[14] + f[15] }' "/proc/$1/stat"
}

box_ticks() { # busy jiffies of the whole machine (all but idle and iowait)
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}
NCPU=$(nproc)

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

declare -A port=([direct]=$BACK [summond]=$SUMMOND [summond-base]=$BASE_PORT [haproxy]=$HAPROXY [socket-proxyd]=$PROXYD_PORT [socat]=$SOCAT)
declare -A pid=([direct]= [summond]=$SUMMOND_PID [summond-base]=$BASE_PID [haproxy]=$HAPROXY_PID [socket-proxyd]=$PROXYD_PID [socat]=$SOCAT_PID)
default_order="direct summond${BASE:+ summond-base} haproxy socket-proxyd socat"
order=(${ONLY:-$default_order})

for r in $(seq "$ROUNDS"); do
  for name in "${order[@]}"; do
    addr=127.0.0.1:${port[$name]}
    p=${pid[$name]}
    c0=$(cpu_ticks "$p")
    b0=$(box_ticks)
    up=$("$RB" up "$addr" "$BYTES")
    down=$("$RB" down "$addr" "$BYTES")
    c1=$(cpu_ticks "$p")
    b1=$(box_ticks)
    rtt=$("$RB" rtt "$addr" "$RTTS")
    c2=$(cpu_ticks "$p")
    cps=$("$RB" conns "$addr" "$CONNS" 4)
    c3=$(cpu_ticks "$p")
    sgib=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v b="$BYTES" 'BEGIN { printf "%.3f", t / hz / (2 * b / 2^30) }')
    uspc=$(awk -v t=$((c3 - c2)) -v hz="$HZ" -v n="$CONNS" 'BEGIN { printf "%.0f", t / hz / n * 1e6 }')
    bgib=$(awk -v t=$((b1 - b0)) -v hz="$HZ" -v b="$BYTES" 'BEGIN { printf "%.3f", t / hz / (2 * b / 2^30) }')
    echo "$name $up $down $sgib $rtt $cps $uspc $bgib" >>"$WORK/rounds"
    echo "round $r $name: up $up MB/s, down $down MB/s, $sgib CPU s/GiB (box $bgib), rtt p50/p99 $rtt µs, $cps conns/s, $uspc CPU µs/conn" >&2
  done
done

direct_p99=$(awk '$1 == "direct" { print $6 }' "$WORK/rounds" | median)
printf '\n%-14s %9s %9s %9s %9s %9s %10s %9s %11s %9s\n' relay "up MB/s" "down MB/s" "CPU s/GiB" "p50 µs" "p99 µs" "+p99 µs" "conns/s" "CPU µs/conn" "box s/GiB"
for name in "${order[@]}"; do
  col() { awk -v n="$name" -v c="$1" '$1 == n { print $c }' "$WORK/rounds" | median; }
  p99=$(col 6)
  added=$(awk -v a="$p99" -v d="$direct_p99" 'BEGIN { printf "%.1f", a - d }')
  printf '%-14s %9s %9s %9s %9s %9s %10s %9s %11s %9s\n' "$name" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)" "$p99" "$added" "$(col 7)" "$(col 8)" "$(col 9)"
done
# At 0.9x direct's rate, a transfer may take NCPU/(0.9 * rate) CPU s per
# GiB in all; the client and the backend take direct's box figure of it.
if grep -q '^direct ' "$WORK/rounds"; then
  dcol() { awk -v c="$1" '$1 == "direct" { print $c }' "$WORK/rounds" | median; }
  awk -v n="$NCPU" -v u="$(dcol 2)" -v d="$(dcol 3)" -v box="$(dcol 9)" 'BEGIN {
    rate = (u + d) / 2 * 1e6 / 2^30
    printf "direct: %.2f GiB/s on %d CPUs at %.3f box CPU s/GiB (%.0f%% of the CPUs busy); at 0.9x that rate a relay may use at most %.3f CPU s/GiB\n", rate, n, box, box * rate / n * 100, n / (0.9 * rate) - box
  }'
fi
for r in $(seq "$ROUNDS"); do
  sleep 0.6 # idle_stop has stopped the cold backend
  wait_ms=$("$RB" first "127.0.0.1:$COLD")
  own_ms=$("$RB" startup "$OWN_BACK" "$RB" serve "$OWN_BACK")
  echo "$wait_ms $own_ms" >>"$WORK/cold"
  echo "cold start $r: first client's wait $wait_ms ms, the backend's own start $own_ms ms" >&2
done
cold_wait=$(awk '{ print $1 }' "$WORK/cold" | median)
cold_own=$(awk '{ print $2 }' "$WORK/cold" | median)
echo "cold start: first client's wait $cold_wait ms - backend's own start $cold_own ms = $(awk -v a="$cold_wait" -v b="$cold_own" 'BEGIN { printf "%.2f", a - b }') ms"
echo "(median of $ROUNDS rounds; $BYTES bytes each way, $RTTS round trips, $CONNS connections 4 at a time; CPU of 'direct' is not measured)"
