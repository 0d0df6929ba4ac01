#!/usr/bin/env bash
# Refresh the import corpus from Debian 12's packages: the .socket units
# they ship (with the service each starts and the /etc/default files the
# service reads), the inetd.conf lines their maintainer scripts register
# with `update-inetd --add`, and xinetd's own configuration. Packages are
# downloaded with `apt-get download` and unpacked with `dpkg-deb` under
# target/import-corpus (never installed); what the tests read is written
# into tests/import-corpus/{systemd,inetd,xinetd} and committed, so CI
# never runs this. Rerunnable: it rewrites those directories whole.
#
#   bash tests/import-corpus/fetch.sh        # needs apt lists (apt-get update)
#
# A package missing from the archive is reported and skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
corpus=tests/import-corpus
work=target/import-corpus

# Debian 12 main packages known to ship a .socket unit (system or user),
# kept by hand: this machine has no Contents index, so the list may miss
# some (`apt-file search --regexp '/systemd/(system|user)/.*\.socket$'`
# where apt-file works finds the rest). A package without one adds nothing.
SYSTEMD_PACKAGES=(
    openssh-server tinysshd dbus dbus-system-bus-common dbus-user-session
    cups-daemon avahi-daemon pcscd uuid-runtime tang fcgiwrap sane-utils
    cockpit-ws libvirt-daemon-system libvirt-daemon docker.io podman rpcbind
    mpd oidentd gpg-agent dirmngr pipewire pipewire-pulse pulseaudio
    systemd systemd-journal-remote systemd-coredump systemd-userdbd
    systemd-container systemd-oomd systemd-homed udev lvm2 dmeventd
    multipath-tools open-iscsi clamav-daemon gpsd lirc acpid spice-vdagent
    sssd-common sssd-kcm snapd knot-resolver erlang-base dovecot-core
    mariadb-server proftpd-core bitlbee-common lxd
    nagios-nrpe-server xen-utils-common p11-kit gnome-keyring gcr
    speech-dispatcher packagekit cloud-init rsync atftpd uwsgi-core
)

# Packages whose maintainer scripts may call `update-inetd --add`
# (`apt-cache rdepends update-inetd openbsd-inetd`, and the inetutils,
# tftp, talk and rsh servers that provide or need inet-superserver).
INETD_PACKAGES=(
    amanda-client amanda-common apt-cacher bootp cfingerd cups-bsd dictd
    efingerd fingerd ident2 leafnode nullidentd p10cfgd popa3d poppassd
    rstatd sane-utils scanbd sendfile solid-pop3d sslh telnetd telnetd-ssl
    remctl-server bidentd ckermit csync2 dbskkd-cdb dicod ftpd-ssl gwhois
    heimdal-kdc heimdal-servers ifcico krb5-kpropd micro-httpd proftpd-core
    pure-ftpd rsh-redone-server rsh-server rusersd rwalld skksearch sn talkd
    uucp xtel atftpd inetutils-ftpd inetutils-talkd inetutils-telnetd
    cvs ftpd tftpd-hpa
)

mkdir -p "$work/debs" "$work/root" "$work/ctl"
versions="$work/versions.txt"
: >"$versions"

# Download PACKAGE into $work/debs (once) and unpack its files and its
# control scripts; prints nothing, fails if the archive has no such package.
fetch() {
    local pkg=$1 deb
    deb=$(ls "$work/debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        (cd "$work/debs" && apt-get download -q "$pkg" >/dev/null 2>&1) || return 1
        deb=$(ls "$work/debs/${pkg}"_*.deb | head -n1)
    fi
    if [ ! -d "$work/root/$pkg" ]; then
        dpkg-deb -x "$deb" "$work/root/$pkg"
        dpkg-deb -e "$deb" "$work/ctl/$pkg"
    fi
    printf '%s %s\n' "$pkg" "$(dpkg-deb -f "$deb" Version)" >>"$versions"
}

missing=()
for pkg in $(printf '%s\n' "${SYSTEMD_PACKAGES[@]}" "${INETD_PACKAGES[@]}" xinetd | sort -u); do
    fetch "$pkg" || missing+=("$pkg")
done
sort -u -o "$versions" "$versions"

# The unit directories of an unpacked package: system units, user units.
unit_dirs() {
    local root=$1 kind=$2 d
    for d in lib/systemd/"$kind" usr/lib/systemd/"$kind"; do
        [ -d "$root/$d" ] && printf '%s\n' "$root/$d"
    done
    return 0
}

# The service a socket starts: Service=, else NAME@.service with
# Accept=yes, else NAME.service (systemd.socket(5)).
service_of() {
    local socket=$1 base explicit
    base=$(basename "$socket" .socket)
    explicit=$(sed -n 's/^[[:space:]]*Service[[:space:]]*=[[:space:]]*//p' "$socket" | tail -n1)
    if [ -n "$explicit" ]; then
        # NAME@%i.service: the template NAME@.service.
        printf '%s\n' "${explicit/@%i./@.}"
    elif grep -Eqi '^[[:space:]]*Accept[[:space:]]*=[[:space:]]*(yes|true|on|1)[[:space:]]*$' "$socket"; then
        printf '%s@.service\n' "$base"
    else
        printf '%s.service\n' "$base"
    fi
}

# Find unit NAME of KIND (system or user): in PACKAGE first, then in any
# other unpacked package (dbus.socket and dbus.service come apart).
find_unit() {
    local pkg=$1 kind=$2 name=$3 dir other
    for dir in $(unit_dirs "$work/root/$pkg" "$kind"); do
        [ -f "$dir/$name" ] && { printf '%s\n' "$dir/$name"; return 0; }
    done
    for other in "$work"/root/*; do
        for dir in $(unit_dirs "$other" "$kind"); do
            [ -f "$dir/$name" ] && { printf '%s\n' "$dir/$name"; return 0; }
        done
    done
    return 1
}

# PACKAGE's copyright file into DIR; a package whose doc directory is a
# link to another's (openssh-server's to openssh-client) takes that one's.
copyright() {
    local pkg=$1 dir=$2 doc
    doc="$work/root/$pkg/usr/share/doc/$pkg"
    if [ -L "$doc" ]; then
        local other
        other=$(basename "$(readlink "$doc")")
        fetch "$other" && doc="$work/root/$other/usr/share/doc/$other"
        echo "$pkg: the copyright file is $other's (its doc directory links there)" >>"$notes"
    fi
    cp "$doc/copyright" "$dir/copyright"
}

# systemd's syslog.socket starts syslog.service, the name Debian's syslog
# daemon takes with Alias= when it is enabled: rsyslog's unit under that
# name, where find_unit looks.
fetch rsyslog
mkdir -p "$work/root/syslog-alias/lib/systemd/system"
cp "$work/root/rsyslog/lib/systemd/system/rsyslog.service" \
    "$work/root/syslog-alias/lib/systemd/system/syslog.service"

rm -rf "$corpus/systemd" "$corpus/inetd" "$corpus/xinetd"
mkdir -p "$corpus/systemd" "$corpus/inetd" "$corpus/xinetd"
notes="$work/notes.txt"
: >"$notes"

# systemd: each .socket with its service beside it, under
# systemd/PACKAGE/ (system units) or systemd/PACKAGE/user/ (user units),
# and the EnvironmentFile= files the package ships at their own path
# below systemd/PACKAGE/ (systemd/openssh-server/etc/default/ssh).
for pkg in "${SYSTEMD_PACKAGES[@]}"; do
    [ -d "$work/root/$pkg" ] || continue
    for kind in system user; do
        for dir in $(unit_dirs "$work/root/$pkg" "$kind"); do
            find "$dir" -maxdepth 1 -type f -name '*.socket' | sort | while read -r socket; do
                out="$corpus/systemd/$pkg"
                [ "$kind" = user ] && out="$out/user"
                mkdir -p "$out"
                cp "$socket" "$out/"
                svc=$(service_of "$socket")
                if found=$(find_unit "$pkg" "$kind" "$svc"); then
                    cp "$found" "$out/"
                    case "$found" in "$work/root/$pkg/"*) ;; *)
                        echo "$pkg: $(basename "$socket")'s $svc is from ${found#"$work"/root/}" |
                            sed 's|from syslog-alias/.*|rsyslog.service (Alias=syslog.service) of rsyslog|' >>"$notes" ;;
                    esac
                    sed -n 's/^[[:space:]]*EnvironmentFile[[:space:]]*=[[:space:]]*-\{0,1\}//p' "$found" |
                        while read -r envfile; do
                            if [ -f "$work/root/$pkg$envfile" ]; then
                                mkdir -p "$corpus/systemd/$pkg$(dirname "$envfile")"
                                cp "$work/root/$pkg$envfile" "$corpus/systemd/$pkg$envfile"
                            else
                                echo "$pkg: $svc's EnvironmentFile $envfile is not in the package" >>"$notes"
                            fi
                        done
                else
                    echo "$pkg: $(basename "$socket")'s $svc is in no fetched package" >>"$notes"
                fi
            done
        done
    done
    [ -d "$corpus/systemd/$pkg" ] && copyright "$pkg" "$corpus/systemd/$pkg"
done

copyright systemd "$corpus/systemd/systemd"
copyright rsyslog "$corpus/systemd/systemd" && mv "$corpus/systemd/systemd/copyright" "$corpus/systemd/systemd/copyright.rsyslog"

# inetd: the entries the maintainer scripts add (see inetd_lines.py).
for pkg in "${INETD_PACKAGES[@]}"; do
    [ -d "$work/ctl/$pkg" ] || continue
    f="$work/ctl/$pkg/postinst"
    [ -f "$f" ] && python3 "$corpus/inetd_lines.py" "$f" "$pkg" >"$corpus/inetd/$pkg.conf.tmp"
    if [ -s "$corpus/inetd/$pkg.conf.tmp" ]; then
        { echo "# update-inetd --add entries of Debian 12's $pkg $(sed -n "s/^$pkg //p" "$versions") (its postinst)"
          cat "$corpus/inetd/$pkg.conf.tmp"; } >"$corpus/inetd/$pkg.conf"
        mkdir -p "$corpus/inetd/copyright"
        copyright "$pkg" "$corpus/inetd/copyright" && mv "$corpus/inetd/copyright/copyright" "$corpus/inetd/copyright/$pkg"
    fi
    rm -f "$corpus/inetd/$pkg.conf.tmp"
done

# xinetd: its own xinetd.conf and /etc/xinetd.d entries.
cp "$work/root/xinetd/etc/xinetd.conf" "$corpus/xinetd/xinetd.conf"
mkdir -p "$corpus/xinetd/xinetd.d"
cp "$work/root/xinetd/etc/xinetd.d/"* "$corpus/xinetd/xinetd.d/"
cp "$work/root/xinetd/usr/share/doc/xinetd/copyright" "$corpus/xinetd/copyright"

# What was fetched, at which version, for the README.
{
    echo "# Debian 12 (bookworm) packages the corpus was taken from, with their versions."
    echo "# Written by fetch.sh; notes: where a unit came from another package."
    for d in "$corpus"/systemd/* ; do p=$(basename "$d"); grep "^$p " "$versions"; done
    for f in "$corpus"/inetd/*.conf; do p=$(basename "$f" .conf); grep "^$p " "$versions"; done
    grep '^xinetd ' "$versions"
    sed 's/^/# note: /' "$notes"
} | awk '!seen[$0]++' >"$corpus/VERSIONS"
if [ ${#missing[@]} -gt 0 ]; then
    echo "not in the archive here (skipped): ${missing[*]}" >&2
fi
echo "corpus: $(find "$corpus/systemd" -name '*.socket' | wc -l) socket units," \
    "$(cat "$corpus"/inetd/*.conf | grep -Evc '^#( |$)') inetd entries" \
    "($(cat "$corpus"/inetd/*.conf | grep -c '^#<off>#') of them #<off>#," \
    "$(cat "$corpus"/inetd/*.conf | grep -Ec '^#[^< ]') commented out)," \
    "$(find "$corpus/xinetd" -type f ! -name copyright | wc -l) xinetd files" >&2
