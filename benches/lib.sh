# Shell helpers the bench scripts share (sourced, not run).

# free_ports N: N distinct loopback ports the kernel has free now (all
# bound at once, so no two are the same).
free_ports() {
  python3 -c 'import socket,sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}
