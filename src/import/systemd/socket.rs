//! The [Socket] section: the `Listen*=` lines as `listen`, one fd per
//! line in line order across every kind (sd_listen_fds(3)), and the
//! socket's options, with systemd's defaults written out where summond's
//! differ (SocketMode= 0666, DirectoryMode= 0755).

use super::keys::{address, LISTEN, SOCKET_FLAGS};
use super::unit::Section;
use super::{yes, File, Import, Names};
use crate::import::{num, s};

const SECTION: &str = "Socket";

/// The `Listen*=` lines in order, since the last empty one (which resets
/// them all, as systemd does).
fn listen_lines(sock: &Section) -> Vec<(&'static str, Option<bool>, String)> {
    let mut out = Vec::new();
    for (k, v) in &sock.entries {
        let Some((key, kind)) = LISTEN.iter().find(|(n, _)| n == k) else {
            continue;
        };
        if v.is_empty() {
            out.clear();
        } else {
            out.push((*key, *kind, v.clone()));
        }
    }
    out
}

/// `listen`: each line an address, named by FileDescriptorName= (or, as
/// systemd names them, by the socket unit's name) when the sockets are
/// passed. A line summond cannot serve renumbers the fds after it, so in
/// pass mode it refuses the service; with Accept=yes it is left out.
pub fn listen(im: &mut Import, sock: &Section, names: &Names, accept: bool) {
    let spec = names.specifiers(&names.socket_unit, false);
    let mut listen = Vec::new();
    let lines = listen_lines(sock);
    let renumbered = if lines.len() > 1 {
        "; the fds after it would be renumbered"
    } else {
        ""
    };
    for (key, kind, value) in lines {
        let line = format!("{key}={value}");
        let address = match (kind, spec.expand(&value)) {
            (_, Err(why)) => Err(why),
            (None, _) => Err("summond serves stream and datagram sockets only".to_string()),
            (Some(stream), Ok(v)) => address(&v, stream)
                .ok_or_else(|| format!("`{v}` is not an address summond listens on")),
        };
        match address {
            Ok(a) => {
                im.carry(File::Socket, SECTION, key);
                listen.push(a);
            }
            Err(why) if accept => im.drop_key(File::Socket, SECTION, key, format!("{line}: {why}")),
            Err(why) => im.refuse(
                File::Socket,
                SECTION,
                key,
                format!("{line}: {why}{renumbered}"),
            ),
        }
    }
    if listen.is_empty() {
        im.e.refuse("no stream or datagram address to listen on");
        for k in [
            "FileDescriptorName",
            "BindIPv6Only",
            "SocketMode",
            "DirectoryMode",
        ] {
            if let Some(v) = sock.last(k) {
                let text = format!("{k}={v}: no address is served to apply it to");
                im.drop_key(File::Socket, SECTION, k, text);
            }
        }
        return;
    }
    let fd_name = sock.last("FileDescriptorName");
    if fd_name.is_some() {
        // With Accept=yes the program gets the connection, which both
        // systemd and summond name "connection".
        im.carry(File::Socket, SECTION, "FileDescriptorName");
    }
    let fd_name = fd_name.unwrap_or_else(|| names.socket_unit.clone());
    let items: Vec<String> = listen
        .iter()
        .map(|a| match accept {
            false => format!("{{ address = {}, name = {} }}", s(a), s(&fd_name)),
            true => s(a),
        })
        .collect();
    im.e.set("listen", format!("[{}]", items.join(", ")));
    im.listens_on_ip = listen
        .iter()
        .any(|a| a.starts_with("tcp://") || a.starts_with("udp://"));
    v6only(im, sock, &listen);
    file_modes(im, sock, &listen);
}

/// BindIPv6Only=: `both` and the default (the kernel's bindv6only, off
/// on every distribution) accept IPv4 on `[::]`; summond's `[::]` is
/// v6-only unless told.
fn v6only(im: &mut Import, sock: &Section, listen: &[String]) {
    let bind = sock.last("BindIPv6Only");
    if bind.is_some() {
        im.carry(File::Socket, SECTION, "BindIPv6Only");
    }
    if bind.as_deref() != Some("ipv6-only") && listen.iter().any(|a| a.contains("[::]")) {
        im.e.set("v6only", "false".into());
    }
}

/// SocketMode= and DirectoryMode=, written out for a socket in the file
/// system: systemd's defaults (0666, 0755) are not summond's.
fn file_modes(im: &mut Import, sock: &Section, listen: &[String]) {
    let in_fs = listen
        .iter()
        .any(|a| a.starts_with("unix:///") || a.starts_with("unixgram:///"));
    for (key, ours, default) in [
        ("SocketMode", "socket_mode", "0666"),
        ("DirectoryMode", "socket_directory_mode", "0755"),
    ] {
        let given = sock.last(key);
        if given.is_some() {
            im.carry(File::Socket, SECTION, key);
        }
        if in_fs {
            im.e.set(ours, s(given.as_deref().unwrap_or(default)));
        }
    }
}

/// systemd's MaxConnections= when the unit says none (Accept=yes).
const MAX_CONNECTIONS_DEFAULT: &str = "64";

/// MaxConnections=: with Accept=yes, at most this many instances (64
/// unless the unit says otherwise, written out since summond has no such
/// default); with Accept=no it has no effect, in systemd as here.
fn max_connections(im: &mut Import, sock: &Section, accept: bool) {
    let given = sock.last("MaxConnections");
    if accept {
        let n = given.as_deref().unwrap_or(MAX_CONNECTIONS_DEFAULT);
        im.e.set("max_instances", num(n));
        if given.is_some() {
            im.carry(File::Socket, SECTION, "MaxConnections");
        }
    } else if let Some(n) = given {
        let text = format!("MaxConnections={n}: no effect with Accept=no, in systemd as here");
        im.drop_key(File::Socket, SECTION, "MaxConnections", text);
    }
}

/// Does the owner SocketUser=/SocketGroup= names exist here (other keys:
/// nothing to look up)?
fn owner_exists(key: &str, name: &str) -> bool {
    match key {
        "SocketUser" => super::service::user_exists(name),
        "SocketGroup" => super::service::group_exists(name),
        _ => true,
    }
}

/// The [Socket] options with a summond key of the same meaning.
pub fn options(im: &mut Import, sock: &Section, accept: bool) {
    max_connections(im, sock, accept);
    match sock.last("MaxConnectionsPerSource") {
        Some(n) if accept => {
            im.e.set("max_per_source", num(&n));
            im.carry(File::Socket, SECTION, "MaxConnectionsPerSource");
        }
        Some(n) => {
            let text = format!(
                "MaxConnectionsPerSource={n}: no effect with Accept=no (the program accepts \
                 its clients), in systemd as here"
            );
            im.drop_key(File::Socket, SECTION, "MaxConnectionsPerSource", text);
        }
        None => {}
    }
    bind_to_device(im, sock);
    if let Some(p) = sock.last("SocketProtocol") {
        let why = format!(
            "SocketProtocol={p}: systemd makes a socket of that protocol (SCTP, UDP-Lite), \
             summond makes TCP and UDP only: its clients could not connect"
        );
        im.refuse(File::Socket, SECTION, "SocketProtocol", why);
    }
    for (key, ours, number) in [
        ("SocketUser", "socket_user", false),
        ("SocketGroup", "socket_group", false),
        ("Backlog", "backlog", true),
    ] {
        let Some(v) = sock.last(key) else { continue };
        if !owner_exists(key, &v) {
            // The socket file would be left root's, reachable only as
            // its mode says for others: refused as an unknown User= is.
            let why = format!("{key}={v}: no such {ours} here: create it, or import again");
            im.refuse(File::Socket, SECTION, key, why.replace("socket_", ""));
            continue;
        }
        im.e.set(ours, if number { num(&v) } else { s(&v) });
        im.carry(File::Socket, SECTION, key);
    }
    for (key, ours) in SOCKET_FLAGS {
        let v = sock.last(key);
        if v.is_some() {
            im.carry(File::Socket, SECTION, key);
        }
        if yes(v) {
            im.e.set(ours, "true".into());
        }
    }
    if sock.last("Accept").is_some() {
        im.carry(File::Socket, SECTION, "Accept");
    }
}

/// BindToDevice=: systemd binds the socket to one interface, so only
/// clients reaching the host through it connect (`lo`: this host only).
/// summond binds to the address alone: on an IP socket the service would
/// be open to every interface, so it is refused; a Unix socket has no
/// interface.
fn bind_to_device(im: &mut Import, sock: &Section) {
    let Some(dev) = sock.last("BindToDevice") else {
        return;
    };
    if im.listens_on_ip {
        let why = format!(
            "BindToDevice={dev}: only clients reaching the host through {dev} may connect, \
             and summond binds to the address alone: listen on {dev}'s own address instead \
             (127.0.0.1 and ::1 for lo), or write allow/deny"
        );
        im.refuse(File::Socket, SECTION, "BindToDevice", why);
    } else {
        let text = format!("BindToDevice={dev}: no effect on a Unix socket");
        im.drop_key(File::Socket, SECTION, "BindToDevice", text);
    }
}
