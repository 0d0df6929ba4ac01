//! type, socket_type, protocol, port, bind (or interface), flags IPv4
//! and IPv6, v6only, wait: the listen address and accept, and the `Shape`
//! the later steps read.

use std::net::IpAddr;

use super::super::{s, Services};
use super::{unreadable, Shape, Svc};

/// type, socket_type, protocol, port, bind, flags IPv4/IPv6, v6only,
/// wait: the listen address and accept. None: refused.
pub fn socket(svc: &mut Svc, name: &str, services: &Services) -> Option<Shape> {
    let types = svc.r.words("type");
    if let Some(t) = types
        .iter()
        .find(|t| matches!(t.as_str(), "RPC" | "TCPMUX" | "TCPMUXPLUS"))
    {
        svc.refuse(
            "type",
            format!("type {t}: ONC RPC and TCPMUX services are not supported"),
        );
        return None;
    }
    svc.carry("type");
    let stream = match svc.r.one("socket_type").as_deref() {
        Some("stream") | None => true,
        Some("dgram") => false,
        Some(other) => {
            svc.refuse(
                "socket_type",
                format!("socket_type {other} is not served by summond"),
            );
            return None;
        }
    };
    svc.carry("socket_type");
    let proto = svc
        .r
        .one("protocol")
        .unwrap_or_else(|| if stream { "tcp" } else { "udp" }.into());
    if proto != "tcp" && proto != "udp" || (proto == "tcp") != stream {
        svc.refuse(
            "protocol",
            format!(
                "protocol {proto} with a {} socket is not served by summond",
                if stream { "stream" } else { "dgram" }
            ),
        );
        return None;
    }
    svc.carry("protocol");
    let given = svc.r.one("port");
    if given.as_ref().is_some_and(|p| p.parse::<u16>().is_err()) {
        unreadable(svc, "port");
        return None;
    }
    if given.is_none() && types.iter().any(|t| t == "UNLISTED") {
        svc.refuse(
            "type",
            "type UNLISTED without `port`: xinetd does not start it (\"must have a port entry\")"
                .into(),
        );
        return None;
    }
    let port = given
        .and_then(|p| p.parse::<u16>().ok())
        .or_else(|| services.port(name, &proto));
    let Some(port) = port.filter(|p| *p != 0) else {
        svc.refuse(
            "port",
            format!("no port: neither `port` nor {name}/{proto} in /etc/services"),
        );
        return None;
    };
    svc.carry("port");
    let v4_only = listen(svc, &proto, port)?;
    let internal = types.iter().any(|t| t == "INTERNAL");
    let child_accepts = accept_mode(svc, stream, internal)?;
    Some(Shape {
        internal,
        child_accepts,
        v4_only,
    })
}

/// bind (or interface), flags IPv6, v6only: the `listen` address. The
/// result says whether the socket is IPv4; None: refused.
fn listen(svc: &mut Svc, proto: &str, port: u16) -> Option<bool> {
    let flags = svc.r.words("flags");
    let bind_attr = if svc.has("bind") { "bind" } else { "interface" };
    let host = match svc.r.one(bind_attr) {
        Some(h) => match h.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{h}]"),
            Ok(IpAddr::V4(_)) => h,
            Err(_) => {
                svc.refuse(bind_attr, format!("{bind_attr} {h}: xinetd resolves it once at start; give the address to bind"));
                return None;
            }
        },
        None if flags.iter().any(|f| f == "IPv6") => "[::]".into(),
        None => "0.0.0.0".into(),
    };
    svc.carry(bind_attr);
    svc.e.set("listen", s(&format!("{proto}://{host}:{port}")));
    let v4_only = !host.starts_with('[');
    match svc.r.one("v6only") {
        Some(_) if v4_only => svc.drop("v6only", "the socket is IPv4"),
        Some(v6) => {
            svc.e
                .set("v6only", if v6 == "yes" { "true" } else { "false" }.into());
            svc.carry("v6only");
        }
        // xinetd's default is v6only = no: its [::] socket serves IPv4
        // clients too; summond's default is IPv6 only.
        None if host == "[::]" => svc.e.set("v6only", "false".into()),
        None => {}
    }
    Some(v4_only)
}

/// wait: `accept`. The result says whether the child accepts its own
/// clients (a program with wait = yes); None: refused.
fn accept_mode(svc: &mut Svc, stream: bool, internal: bool) -> Option<bool> {
    let wait = svc.r.one("wait");
    let child_accepts = match wait.as_deref() {
        Some("yes") if internal && stream => {
            svc.drop(
                "wait",
                "summond serves each connection of its internal services itself",
            );
            false
        }
        Some("yes") => {
            svc.e.set("accept", "false".into());
            svc.carry("wait");
            !internal
        }
        None => {
            // NECESSARY_ATTRS: "missing attribute wait - DISABLING".
            svc.e
                .refuse("no `wait`: xinetd requires it and does not start the service");
            return None;
        }
        Some("no") if stream => {
            svc.carry("wait");
            false
        }
        Some("no") if internal => {
            svc.e.set("accept", "false".into());
            svc.carry("wait");
            false
        }
        Some("no") => {
            svc.refuse(
                "wait",
                "a datagram service with wait = no has nothing to accept".into(),
            );
            return None;
        }
        Some(other) => {
            svc.refuse("wait", format!("wait = {other}: xinetd takes yes or no"));
            return None;
        }
    };
    Some(child_accepts)
}
