#!/usr/bin/env bash
# Check a built package the way a user meets it: lintian finds no error,
# dpkg installs it, the installed binary validates the installed config,
# serves a client, answers `summond status`, and the purge leaves nothing.
# Needs root (dpkg -i). The installed sample's port is swapped for one
# picked at run time, and its control socket for a temporary path, so the
# check binds nothing fixed.
#
#   packaging/test-deb.sh target/debian/summond_*.deb
set -euo pipefail
DEB="$1"
lintian --fail-on error --tag-display-limit 0 "$DEB" 2>/dev/null
echo "lintian: no errors"
dpkg -i "$DEB" >/dev/null
trap 'dpkg --purge summond >/dev/null 2>&1 || true' EXIT
test -x /usr/sbin/summond
test -f /lib/systemd/system/summond.service
test -f /usr/share/man/man5/summond.toml.5.gz
test -f /usr/share/bash-completion/completions/summond
test -f /usr/share/summond/summond.schema.json
# The installed config and examples name the installed schema, and taplo
# (.ci/run installs it in target/taplo) finds them valid by it.
if [ -n "${SUMMOND_TAPLO:-}" ]; then
    for f in /etc/summond/summond.toml /usr/share/doc/summond/examples/*.toml; do
        head -1 "$f" | grep -qx '#:schema /usr/share/summond/summond.schema.json'
        "$SUMMOND_TAPLO" check "$f" 2>/dev/null || { "$SUMMOND_TAPLO" check "$f" >&2; exit 1; }
    done
    echo "taplo: the installed config and examples are valid by the installed schema"
fi
out="$(/usr/sbin/summond --check -c /etc/summond/summond.toml)"
[ "$out" = "ok: 2 services" ] || { echo "check said: $out" >&2; exit 1; }
man -l /usr/share/man/man8/summond.8.gz >/dev/null 2>&1 || true

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
tmp="$(mktemp -d)"
sed "s/13013/$port/g; s#/run/summond.sock#$tmp/control.sock#" /etc/summond/summond.toml > "$tmp/c.toml"
/usr/sbin/summond -c "$tmp/c.toml" 2>"$tmp/log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; dpkg --purge summond >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do grep -q " serving " "$tmp/log" && break; sleep 0.1; done
exec 3<>"/dev/tcp/127.0.0.1/$port"
read -r -t 5 answer <&3 || true
exec 3<&-
case "$answer" in
    *[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*) echo "installed summond answered: $answer" ;;
    *) echo "no daytime answer: '$answer'" >&2; cat "$tmp/log" >&2; exit 1 ;;
esac
/usr/sbin/summond status --control "$tmp/control.sock" | grep -q '^daytime '
kill "$pid"
wait "$pid" || true
dpkg --purge summond >/dev/null
if [ -e /usr/sbin/summond ] || [ -e /etc/summond/summond.toml ]; then
    echo "purge left files behind" >&2
    exit 1
fi
echo "package: installed, served, purged"
