#!/usr/bin/env bash
# `summond reload`'s round trip (ask, load in the helper, apply, answer)
# with 1,000 and 10,000 services, one of them changed each time, against
# `summond --check` of the same file in the same run (loading and checking
# alone: the floor of any reload). Medians of ROUNDS rounds.
#
#   benches/reload.sh [ROUNDS]
#
# Every service listens on a Unix socket in a temporary directory; the one
# summond started is stopped by its pid.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${1:-5}"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin summond
BIN="$ROOT/target/release/summond"
WORK="$(mktemp -d)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

ms() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

config() { # N MAX_INSTANCES_OF_THE_FIRST
    printf '[daemon]\ncontrol = "%s/control.sock"\nmax_children = 100000\n' "$WORK"
    for i in $(seq 0 $(($1 - 1))); do
        printf '[[service]]\nname = "s%d"\nlisten = "unix://%s/s/%d.sock"\nexec = ["cat"]\n' "$i" "$WORK" "$i"
        if [ "$i" = 0 ]; then printf 'max_instances = %d\n' "$2"; fi
    done
}

for n in 1000 10000; do
    rm -rf "$WORK/s" && mkdir -p "$WORK/s"
    config "$n" 1 >"$WORK/summond.toml"
    "$BIN" -c "$WORK/summond.toml" --log-level warn 2>"$WORK/log" &
    PID=$!
    for _ in $(seq 1 600); do
        "$BIN" status --control "$WORK/control.sock" >/dev/null 2>&1 && break
        sleep 0.1
    done
    [ -S "$WORK/control.sock" ] || { cat "$WORK/log" >&2; exit 1; }
    reloads=() checks=()
    for r in $(seq 1 "$ROUNDS"); do
        config "$n" $((r + 1)) >"$WORK/summond.toml"
        t0=$(ms)
        out=$("$BIN" reload --control "$WORK/control.sock")
        t1=$(ms)
        "$BIN" --check -c "$WORK/summond.toml" >/dev/null
        t2=$(ms)
        [ "$out" = "reloaded: $n services (+0 -0 ~1)" ] || { echo "unexpected: $out" >&2; exit 1; }
        reloads+=($(((t1 - t0) / 1000000)))
        checks+=($(((t2 - t1) / 1000000)))
    done
    kill "$PID" && wait "$PID" || true
    PID=""
    rl=$(printf '%s\n' "${reloads[@]}" | median)
    ck=$(printf '%s\n' "${checks[@]}" | median)
    echo "$n services: summond reload ${rl} ms (rounds: ${reloads[*]}), summond --check ${ck} ms (${checks[*]}), ratio $(awk -v a="$rl" -v b="$ck" 'BEGIN {printf "%.2f", a / (b ? b : 1)}')"
done
