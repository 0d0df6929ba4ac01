#!/usr/bin/env bash
# Build summond_VERSION_ARCH.deb from this repository, with nothing but
# cargo and dpkg-deb: the binary in /usr/sbin, the systemd unit, a safe
# /etc/summond/summond.toml (a conffile: loopback only, internal services),
# the man pages, the bash/zsh/fish completions, the example entries, the
# JSON Schema editors check summond.toml with (/usr/share/summond, where
# the `#:schema` line of the config and the examples points).
#
#   packaging/deb.sh [OUT_DIR]      # default: target/debian
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/target/debian}"
cd "$ROOT"

cargo build --release --locked --bin summond
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
ARCH="$(dpkg --print-architecture)"
REL="$ROOT/target/release"
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
PKG="$STAGE/summond"

install -D -m 755 "$REL/summond" "$PKG/usr/sbin/summond"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$PKG/usr/sbin/summond"
# The unit as shipped in conf/, pointed at the packaged binary.
install -d "$PKG/lib/systemd/system"
sed 's#/usr/local/bin/summond#/usr/sbin/summond#g' conf/summond.service \
    > "$PKG/lib/systemd/system/summond.service"
chmod 644 "$PKG/lib/systemd/system/summond.service"
install -D -m 644 packaging/summond.toml "$PKG/etc/summond/summond.toml"
install -d "$PKG/etc/summond/conf.d"
for page in "$REL"/man/*.8; do
    install -D -m 644 "$page" "$PKG/usr/share/man/man8/$(basename "$page")"
done
for page in "$REL"/man/*.5; do
    install -D -m 644 "$page" "$PKG/usr/share/man/man5/$(basename "$page")"
done
gzip -9n "$PKG"/usr/share/man/man*/*
install -D -m 644 "$REL/completions/summond.bash" "$PKG/usr/share/bash-completion/completions/summond"
install -D -m 644 "$REL/completions/_summond" "$PKG/usr/share/zsh/vendor-completions/_summond"
install -D -m 644 "$REL/completions/summond.fish" "$PKG/usr/share/fish/vendor_completions.d/summond.fish"
DOC="$PKG/usr/share/doc/summond"
install -D -m 644 packaging/copyright "$DOC/copyright"
install -D -m 644 README.md "$DOC/README.md"
gzip -9n "$DOC/README.md"
# The reference pages the README links to (Debian policy 12.3: compressed
# when larger than 4 kB).
for page in docs/*.md; do
    install -D -m 644 "$page" "$DOC/docs/$(basename "$page")"
    if [ "$(stat -c %s "$page")" -gt 4096 ]; then gzip -9n "$DOC/docs/$(basename "$page")"; fi
done
# Built from the key table as the man pages are (docs/ holds the same
# file, for the repository's own samples).
install -D -m 644 "$REL/docs/summond.schema.json" "$PKG/usr/share/summond/summond.schema.json"
# The examples' `#:schema` line names the schema relative to the
# repository; installed, they point to the installed one.
for ex in conf/examples/*.toml; do
    install -d "$DOC/examples"
    sed '1s|^#:schema .*|#:schema /usr/share/summond/summond.schema.json|' "$ex" \
        > "$DOC/examples/$(basename "$ex")"
    chmod 644 "$DOC/examples/$(basename "$ex")"
done
DATE="$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")"
printf 'summond (%s) unstable; urgency=medium\n\n  * Built from the summond repository.\n\n -- summond maintainers <maintainers@summond.example.org>  %s\n' \
    "$VERSION" "$DATE" | gzip -9n > "$DOC/changelog.gz"
chmod 644 "$DOC/changelog.gz"

install -d "$PKG/DEBIAN"
printf '/etc/summond/summond.toml\n' > "$PKG/DEBIAN/conffiles"
SIZE="$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)"
cat > "$PKG/DEBIAN/control" <<CONTROL
Package: summond
Version: $VERSION
Architecture: $ARCH
Maintainer: summond maintainers <maintainers@summond.example.org>
Installed-Size: $SIZE
Depends: libc6 (>= 2.34)
Section: net
Priority: optional
Description: inetd-style socket-activation super-server
 One event loop holds every configured TCP, UDP and Unix socket; when a
 client arrives, summond starts the mapped program and hands it the
 socket, as stdin/stdout (the inetd way) or as LISTEN_FDS (the systemd
 way). Limits, rates, access rules, a per-service sandbox, internal
 services, drop-in configs, Prometheus metrics and systemd notify.
CONTROL
(cd "$PKG" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
    > "$PKG/DEBIAN/md5sums"
chmod 644 "$PKG/DEBIAN/control" "$PKG/DEBIAN/conffiles" "$PKG/DEBIAN/md5sums"

mkdir -p "$OUT"
DEB="$OUT/summond_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
