//! Whether the service is on (disable, the defaults' enabled and
//! disabled, flags DISABLE), its flags, and the attributes summond has no
//! home for: banners, logs, access_times, deny_time, mdns, rpc_*.

use super::Svc;

/// disable, the defaults' enabled and disabled id lists, id.
pub fn state(svc: &mut Svc, name: &str) {
    let id = svc.r.one("id").unwrap_or_else(|| name.to_string());
    svc.carry("id");
    let mut off = svc.r.one("disable").as_deref() == Some("yes");
    svc.carry("disable");
    if svc.r.words("flags").iter().any(|f| f == "DISABLE") {
        off = true;
    }
    if let Some(enabled) = &svc.r.enabled {
        if !enabled.contains(&id) {
            off = true;
        }
        svc.e.carry("enabled (defaults)");
    }
    if svc.r.disabled.contains(&id) {
        off = true;
        svc.e.carry("disabled (defaults)");
    }
    if off {
        svc.e.set("disabled", "true".into());
    }
}

/// flags, banners, logs, access_times and the attributes summond has no
/// home for.
pub fn extras(svc: &mut Svc) {
    flags(svc);
    for attr in ["banner", "banner_success", "banner_fail"] {
        svc.drop(
            attr,
            "summond's banner and banner_fail are text in the config, not files",
        );
    }
    for attr in ["log_type", "log_on_success", "log_on_failure"] {
        svc.drop(
            attr,
            "summond logs every connection to one log (stderr, syslog or JSON)",
        );
    }
    if let Some(times) = svc
        .r
        .one("access_times")
        .map(|_| svc.r.words("access_times").join(" "))
    {
        svc.refuse("access_times", format!(
            "access_times {times}: summond serves at all hours; remove it to serve the service always"
        ));
    }
    svc.drop(
        "deny_time",
        "it goes with flags SENSOR, which summond does not have",
    );
    svc.drop("mdns", "summond registers no service with mDNS");
    for attr in ["rpc_version", "rpc_number"] {
        svc.drop(attr, "only for type = RPC, which summond does not serve");
    }
}

fn flags(svc: &mut Svc) {
    let flags = svc.r.words("flags");
    let userid = ["log_on_success", "log_on_failure"]
        .iter()
        .any(|a| svc.r.words(a).iter().any(|w| w == "USERID"));
    for f in &flags {
        match f.as_str() {
            "NODELAY" => svc.e.set("nodelay", "true".into()),
            "KEEPALIVE" => svc.e.set("keepalive", "true".into()),
            "REUSE" | "IPv4" | "IPv6" | "NAMEINARGS" | "NOLIBWRAP" | "DISABLE" | "SENSOR" => {}
            "IDONLY" if userid => svc.e.refuse(
                "flags IDONLY: xinetd serves only clients whose ident server names the user; summond asks no ident server",
            ),
            "IDONLY" => svc.e.drop_setting("flags IDONLY: xinetd ignores it without USERID in log_on_success or log_on_failure"),
            "LABELED" => svc.e.refuse(
                "flags LABELED: xinetd runs the server in the client's SELinux context; summond sets no SELinux context",
            ),
            "INTERCEPT" => svc.e.drop_setting(
                "flags INTERCEPT: summond puts no filter process between a wait = yes server and its clients",
            ),
            "NORETRY" => svc.e.drop_setting("flags NORETRY: summond does not retry a failed fork either"),
            other => svc.e.drop_setting(format!("flags {other}: not an xinetd flag")),
        }
    }
    svc.carry("flags");
}
