#!/usr/bin/env bash
# Regenerate link/hot-text.ld: the functions summond runs while it serves,
# which the release build links next to each other (see build.rs). The
# kernel maps a binary's code 64 kB at a time around each page first
# touched, so a serving path scattered over the 2 MB of text made every
# idle summond hold about 1 MB of it; packed, it holds a few windows.
#
#   benches/hot-text.sh        (needs valgrind; about a minute)
#
# Two profiles under callgrind, each zeroed once summond is up so startup
# (config, clap, toml) is left out:
#   1. the common case, first in the file: a TCP "nowait" service, clients
#      one after another (accept, spawn, reap, the idle loop);
#   2. the rest of the serving paths: options that touch each connection
#      (access lists, per-source limits, rate, banner, env), a UDP "wait"
#      service, a listen_fds daemon, an internal service, a Unix socket and
#      `summond status`.
# summond runs with an fd limit of 100 so it spawns without CLONE_FILES
# (valgrind cannot follow that clone); the code it runs is otherwise the
# same. Names lose their hash (`17h…E`) and LLVM's `.N` suffixes, so the
# file keeps matching while the code changes; a function renamed since
# simply falls back to its place in .text. Re-run after large changes to
# the serving path and commit the result with the figures it gives.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/link/hot-text.ld"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin summond --examples
BIN="$ROOT/target/release/summond"
WORK="$(mktemp -d)"
VG=""
cleanup() { [ -n "$VG" ] && kill -9 "$VG" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
# wait_port PORT: until a socket listens on it, without connecting (a
# client now would be served before the counts are zeroed).
wait_port() {
  local hex; hex=$(printf '%04X' "$1")
  until awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" {found=1} END {exit !found}' /proc/net/tcp; do
    sleep 0.1
  done
}
tcp_read() { timeout 5 cat <"/dev/tcp/127.0.0.1/$1" >/dev/null || true; }

# profile NAME CONFIG FIRST_PORT DRIVE: run summond under callgrind on
# CONFIG, zero the counts once FIRST_PORT listens, run DRIVE, dump.
profile() {
  (ulimit -n 100; exec valgrind --tool=callgrind --demangle=no \
     --callgrind-out-file="$WORK/$1.%p" "$BIN" -c "$2") \
     >"$WORK/$1.log" 2>&1 &
  VG=$!
  wait_port "$3"
  sleep 0.5
  callgrind_control -z "$VG" >/dev/null
  "$4"
  sleep 0.5
  callgrind_control -d "$VG" >/dev/null
  # The dump of summond itself (the subshell exec'd valgrind, which ran
  # summond in the same process); children before exec dump on their own.
  mv "$WORK/$1.$VG.1" "$WORK/$1.out"
  kill -9 "$VG"; wait "$VG" 2>/dev/null || true; VG=""
}

read -r P1 P2 P3 P4 P5 < <(free_ports 5)

cat >"$WORK/one.toml" <<EOF
[[service]]
name = "hello"
listen = "tcp://127.0.0.1:$P1"
exec = ["/bin/echo", "hello"]
EOF
drive_one() { for _ in $(seq 30); do tcp_read "$P1"; done; }
profile one "$WORK/one.toml" "$P1" drive_one

cat >"$WORK/all.toml" <<EOF
[daemon]
control = "$WORK/control.sock"

[[service]]
name = "echo"
listen = "tcp://127.0.0.1:$P1"
exec = ["/bin/cat"]
max_instances = 16
max_per_source = 8
rate = "200/1s"
per_source_rate = "100/10s"
allow = ["127.0.0.0/8"]
deny = ["127.0.0.254/32"]
max_runtime = "10m"
env = { GREETING = "hi" }
banner = "hi\r\n"

[[service]]
name = "upcase-udp"
listen = "udp://127.0.0.1:$P2"
exec = ["perl", "-e", "my \$peer = recv(STDIN, my \$buf, 65536, 0); send(STDOUT, uc \$buf, 0, \$peer)"]

[[service]]
name = "listenfd"
listen = "tcp://127.0.0.1:$P3"
exec = ["$ROOT/target/release/examples/hello_listenfd"]
accept = false
pass = "listen_fds"
env = { HELLO_IDLE_EXIT = "1" }

[[service]]
name = "daytime"
listen = ["tcp://127.0.0.1:$P4", "udp://127.0.0.1:$P4"]
exec = ["internal:daytime"]

[[service]]
name = "whoami"
listen = "unix://$WORK/whoami.sock"
exec = ["/bin/echo", "hi"]

[[service]]
name = "stderr-socket"
listen = "tcp://127.0.0.1:$P5"
exec = ["/bin/sh", "-c", "echo hi; exit 3"]
stderr = "socket"
EOF
drive_all() {
  for _ in $(seq 5); do
    (exec 3<>"/dev/tcp/127.0.0.1/$P1"; echo hi >&3; timeout 5 head -2 <&3 >/dev/null) || true
    python3 -c 'import socket,sys
for p in sys.argv[1:]:
    s = socket.socket(2, 2); s.settimeout(5); s.sendto(b"hi", ("127.0.0.1", int(p))); s.recv(99)' "$P2" "$P4"
    tcp_read "$P3"; tcp_read "$P4"; tcp_read "$P5"
    python3 -c 'import socket,sys
s = socket.socket(1, 1); s.connect(sys.argv[1]); s.recv(99)' "$WORK/whoami.sock"
    "$BIN" status -c "$WORK/all.toml" >/dev/null
  done
}
profile all "$WORK/all.toml" "$P1" drive_all

# The functions of summond's own binary with instructions counted; the
# common case's ahead of the rest. A function is summond's if
# the binary defines its symbol (callgrind's object names are not always
# resolved).
names() {
  nm --defined-only "$BIN" | awk '{print $3}' >"$WORK/symbols"
  python3 - "$WORK/symbols" "$@" <<'PY'
import re, sys
symbols = set(open(sys.argv[1]).read().split())
seen, out = set(), []
for path in sys.argv[2:]:
    fn, fns, cost, call = None, {}, {}, False
    def lookup(text):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?", text)
        if not m:
            return text
        if m.group(2):
            fns[m.group(1)] = m.group(2)
        return fns.get(m.group(1), "")
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("fn="):
            fn, call = lookup(line[3:]), False
        elif line.startswith("cfn="):
            lookup(line[4:])
        elif line.startswith("calls="):
            call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if call:
                call = False
            elif fn and len(line.split()) > 1:
                cost[fn] = cost.get(fn, 0) + int(line.split()[1])
    # By name within each profile: the file changes only when the set
    # does, not with the counts of one run.
    for name, c in sorted(cost.items()):
        if name in symbols and c > 0:
            name = re.sub(r"17h[0-9a-f]{16}E$", "17h*", name)
            name = re.sub(r"\.[0-9]+$", ".*", name)
            if name not in seen:
                seen.add(name)
                out.append(name)
for name in out:
    print(name)
PY
}
mapfile -t HOT < <(names "$WORK/one.out" "$WORK/all.out")
# A profile that missed the serving path (a client that was not served,
# a dump taken too early) must not replace a good file.
for f in 6Server3run 11spawn_child 16start_connection 13reap_children 8internal; do
  if ! printf '%s\n' "${HOT[@]}" | grep -q "$f"; then
    echo "hot-text: no function like $f in the profiles; logs in $WORK" >&2
    KEEP=1
    exit 1
  fi
done
mkdir -p "$(dirname "$OUT")"
{
  echo "/* Generated by benches/hot-text.sh; see there. The functions summond"
  echo " * runs while serving, the common case's first, in one output section before"
  echo " * .text (cold ones, in .text.unlikely, too). Added to the default"
  echo " * linker script by build.rs for release builds. */"
  echo "SECTIONS"
  echo "{"
  echo "  .text.hot :"
  echo "  {"
  for n in "${HOT[@]}"; do
    echo "    *(.text.$n .text.unlikely.$n)"
  done
  echo "  }"
  echo "}"
  echo "INSERT BEFORE .text;"
} >"$OUT"
echo "wrote $OUT: ${#HOT[@]} functions"
