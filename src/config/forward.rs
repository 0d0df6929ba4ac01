//! Forward mode's keys (`forward`, `ready`, `start_timeout`, `idle_stop`,
//! `stop_timeout`): their handlers, and the step that checks them against
//! the rest of the service. Forward mode accepts every client itself and
//! relays it to a backend the service's `exec` starts, so the keys that
//! hand a socket to a child (`accept = false`, `pass`, `stderr =
//! "socket"`) or serve it in summond (`internal:`) cannot go with it.

use std::time::Duration;

use super::draft::Draft;
use super::options::invalid;
use super::parse::{Checker, Table, Value};
use super::units;
use super::{Forward, ProxyHeader, Ready, StderrMode};
use crate::addr::ListenAddr;

/// SPEC defaults.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys that mean nothing without `forward`.
const NEEDS_FORWARD: &[&str] = &[
    "ready",
    "start_timeout",
    "idle_stop",
    "stop_timeout",
    "forward_proxy_protocol",
];

/// What the handlers read; built into a `Forward` once `forward` is known.
#[derive(Default)]
pub(super) struct ForwardDraft {
    pub to: Option<ListenAddr>,
    pub ready: Option<Ready>,
    pub start_timeout: Option<Duration>,
    pub idle_stop: Option<Duration>,
    pub stop_timeout: Option<Duration>,
    pub proxy: Option<ProxyHeader>,
}

impl ForwardDraft {
    pub(super) fn build(&self) -> Option<Forward> {
        Some(Forward {
            to: self.to.clone()?,
            ready: self.ready.unwrap_or(Ready::Connect),
            start_timeout: self.start_timeout.unwrap_or(DEFAULT_START_TIMEOUT),
            idle_stop: self.idle_stop,
            stop_timeout: self.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
            proxy: self.proxy,
        })
    }
}

/// `forward`: where the backend listens, a stream address.
pub(super) fn to<'v>(cx: &mut Checker<'_>, key: &'static str, v: &'v Value<'v>, d: &mut Draft<'v>) {
    let Some(text) = cx.string(key, v) else {
        return;
    };
    match text.parse::<ListenAddr>().map(unmapped) {
        Ok(addr) if addr.is_stream() => {
            if let Some(why) = unsafe_socket_path(&addr) {
                cx.at(v.span(), invalid(key, why));
            }
            d.forward.to = Some(addr)
        }
        Ok(addr) => cx.at(
            v.span(),
            invalid(
                key,
                format!("{addr} is a datagram address; forward relays tcp:// or unix:// streams"),
            ),
        ),
        Err(e) => cx.at(v.span(), invalid(key, e.to_string())),
    }
}

pub(super) fn ready<'v>(
    cx: &mut Checker<'_>,
    key: &'static str,
    v: &'v Value<'v>,
    d: &mut Draft<'v>,
) {
    let choices = &[("connect", Ready::Connect), ("notify", Ready::Notify)];
    d.forward.ready = cx.choice(key, v, choices);
}

pub(super) fn start_timeout<'v>(
    cx: &mut Checker<'_>,
    key: &'static str,
    v: &'v Value<'v>,
    d: &mut Draft<'v>,
) {
    d.forward.start_timeout = cx.parsed(key, v, units::duration);
}

pub(super) fn idle_stop<'v>(
    cx: &mut Checker<'_>,
    key: &'static str,
    v: &'v Value<'v>,
    d: &mut Draft<'v>,
) {
    d.forward.idle_stop = cx.parsed(key, v, units::duration);
}

pub(super) fn stop_timeout<'v>(
    cx: &mut Checker<'_>,
    key: &'static str,
    v: &'v Value<'v>,
    d: &mut Draft<'v>,
) {
    d.forward.stop_timeout = cx.parsed(key, v, units::duration);
}

pub(super) fn proxy<'v>(
    cx: &mut Checker<'_>,
    key: &'static str,
    v: &'v Value<'v>,
    d: &mut Draft<'v>,
) {
    let choices = &[("v1", ProxyHeader::V1), ("v2", ProxyHeader::V2)];
    d.forward.proxy = cx.choice(key, v, choices);
}

impl Checker<'_> {
    /// The forward keys against the rest: each mistake at its key.
    pub(super) fn check_forward(&mut self, t: &Table<'_, '_>, d: &Draft<'_>) {
        let Some(forward) = t.field("forward") else {
            for &key in NEEDS_FORWARD {
                if let Some(v) = t.field(key) {
                    self.at(
                        v.span(),
                        invalid(key, "needs `forward` (it sets up forward mode)"),
                    );
                }
            }
            return;
        };
        if let Some(l) = d.listen.iter().find(|l| !l.addr.is_stream()) {
            let why = format!(
                "relays stream connections, and {} is a datagram address",
                l.addr
            );
            self.at(forward.span(), invalid("forward", why));
        }
        if let Some(v) = t
            .field("accept")
            .filter(|v| v.get_ref().as_bool() == Some(false))
        {
            let why = "must be true with `forward` (summond accepts each client and relays it)";
            self.at(v.span(), invalid("accept", why));
        }
        if let Some(v) = t.field("pass") {
            let why =
                "has no use with `forward` (the backend gets no socket: it listens on its own)";
            self.at(v.span(), invalid("pass", why));
        }
        if let (Some(v), StderrMode::Socket) = (t.field("stderr"), d.stderr) {
            let why = "\"socket\" cannot go with `forward` (the backend serves many clients)";
            self.at(v.span(), invalid("stderr", why));
        }
        if let (Some(v), Some(internal)) = (t.field("exec"), d.internal()) {
            let why = format!(
                "\"internal:{}\" is served inside summond: there is no backend to forward to",
                internal.name()
            );
            self.at(v.span(), invalid("exec", why));
        }
    }
}

/// A `unix://` forward path that root would connect to through a
/// directory another user can change (the rule of `listen` paths with
/// `socket_directory_mode`). A directory not there yet is checked again
/// at each readiness probe, with the socket itself.
/// An IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]`) as the IPv4 one
/// it names: a connect reaches the same listener either way, but the
/// checks of who holds `forward` look among listeners of the address's
/// own family, where an AF_INET listener is never found (the backend
/// was never taken as ready, and probed 400 times a second until
/// start_timeout).
fn unmapped(addr: ListenAddr) -> ListenAddr {
    match addr {
        ListenAddr::Tcp(sa) => {
            ListenAddr::Tcp(std::net::SocketAddr::new(sa.ip().to_canonical(), sa.port()))
        }
        other => other,
    }
}

fn unsafe_socket_path(addr: &ListenAddr) -> Option<String> {
    use crate::safe_dir::SocketPathRefusal;
    let ListenAddr::Unix(crate::addr::UnixPath::File(path)) = addr else {
        return None;
    };
    match crate::safe_dir::socket_parents(path) {
        Ok(()) | Err(SocketPathRefusal::Missing(_)) => None,
        Err(why) => Some(format!(
            "summond will not connect to {}: {why}",
            path.display()
        )),
    }
}
