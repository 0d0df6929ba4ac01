#!/usr/bin/env bash
# summond's own user-space instructions per connection, counted by
# callgrind: repeatable to a few in a thousand whatever the machine's
# load, where CPU time on a shared VM moves by 2x (benches/quick.sh,
# benches/proxy.sh). Two services in one summond, `/bin/echo hello`, one
# plain and one with `proxy_protocol = "v2"`; N clients one after
# another to each (a python client that sends the v2 header a balancer
# would), counts zeroed after 20 of warm-up and dumped after the N.
# Kernel time (syscalls) is not in the figure: count those with strace -c.
#
#   benches/conn-instructions.sh [N] [BIN]
#
# BIN defaults to this tree's release build; give an older build's path to
# compare (f6c294b: 6552 plain with one service, see README.md).
# summond runs with an fd limit of 100, as in hot-text.sh: valgrind
# cannot follow the CLONE_FILES spawn; the path is otherwise the same.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-200}"
BIN="${2:-}"
if [ -z "$BIN" ]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin summond
  BIN="$ROOT/target/release/summond"
fi
WORK="$(mktemp -d)"
VG=""
cleanup() { [ -n "$VG" ] && kill -9 "$VG" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

cat >"$WORK/client.py" <<'PY'
import socket, struct, sys
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if mode == "v2":
        # A client of the balancer's: a header naming the connection's
        # own ends is a health check's (held for its next byte).
        a, b = ("192.0.2.1", s.getsockname()[1]), s.getpeername()
        body = socket.inet_aton(a[0]) + socket.inet_aton(b[0]) + struct.pack(">HH", a[1], b[1])
        s.sendall(b"\r\n\r\n\0\r\nQUIT\n\x21\x11" + struct.pack(">H", len(body)) + body)
    while s.recv(4096):
        pass
    s.close()
PY

read -r P1 P2 < <(free_ports 2)
cat >"$WORK/s.toml" <<TOML
[daemon]
max_children = 4096
[[service]]
name = "plain"
listen = "tcp://127.0.0.1:$P1"
exec = ["/bin/echo", "hello"]
[[service]]
name = "proxied"
listen = "tcp://127.0.0.1:$P2"
exec = ["/bin/echo", "hello"]
proxy_protocol = "v2"
proxy_from = ["127.0.0.0/8"]
TOML
(ulimit -n 100; exec valgrind --tool=callgrind --demangle=no \
   --callgrind-out-file="$WORK/cg.%p" "$BIN" -c "$WORK/s.toml" --log-level warn) \
   >"$WORK/log" 2>&1 &
VG=$!
hex=$(printf '%04X' "$P2")
until awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" {f=1} END {exit !f}' /proc/net/tcp; do sleep 0.1; done
sleep 1
n=0
for mode in plain v2; do
  port=$P1; [ "$mode" = v2 ] && port=$P2
  python3 "$WORK/client.py" "$port" 20 "$mode"
  callgrind_control -z "$VG" >/dev/null 2>&1
  python3 "$WORK/client.py" "$port" "$N" "$mode"
  sleep 0.3
  callgrind_control -d "$mode" "$VG" >/dev/null 2>&1
  n=$((n + 1))
  total=$(grep -m1 '^totals:' "$WORK/cg.$VG.$n" | awk '{print $2}')
  echo "$mode: $((total / N)) instructions per connection ($N connections)"
done
