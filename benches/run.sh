#!/usr/bin/env bash
# Benchmark summond beside the ceilings (tinysrv, spawnloop, epollsrv) and
# whatever anchors are available, with the shared harness in
# ../shared/bench (see its README for what is measured).
#
#   benches/run.sh [OUT_DIR] [bench.py options...]
#
# Builds summond in release mode and the harness's C tools under
# target/bench (the harness folder may be read-only). Anchors (xinetd,
# openbsd-inetd, tcpserver, ...) are used if $ANCHORS_DIR holds them:
#   ANCHORS_DIR=$PWD/target/bench/anchors ../shared/bench/setup-anchors.sh --deps
# Everything runs on 127.0.0.1, ports 20000-24999; run as root (the
# harness's generated configs run services as root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="${BENCH_DIR:-$ROOT/../shared/bench}"
OUT="${1:-$ROOT/benches/results-$(date -u +%Y-%m-%d)}"
shift || true
export BENCH_BUILD="$ROOT/target/bench"
export ANCHORS_DIR="${ANCHORS_DIR:-$BENCH_BUILD/anchors}"
cargo build --release --manifest-path "$ROOT/Cargo.toml"
make -s -C "$BENCH" BUILD="$BENCH_BUILD"
exec python3 "$BENCH/bench.py" --summond "$ROOT/target/release/summond" --out "$OUT" "$@"
