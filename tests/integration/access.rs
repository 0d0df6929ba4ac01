//! allow/deny: refused clients are closed at once, logged with their
//! address, and never cause a fork. deny wins over allow.

use crate::util::*;

fn service(name: &str, port: u16, rules: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\n{rules}\n",
        sh("echo served")
    )
}

#[test]
fn allow_and_deny_decide_who_is_served() {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let s = Summond::start(
        &[
            service("denied", ports[0], "deny = [\"127.0.0.1\"]"),
            service("elsewhere", ports[1], "allow = [\"10.0.0.0/8\", \"::1\"]"),
            service("local", ports[2], "allow = [\"127.0.0.0/8\"]"),
            service(
                "denywins",
                ports[3],
                "allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.0/24\"]",
            ),
        ]
        .concat(),
    );
    assert!(closed_at_once(ports[0]));
    assert!(closed_at_once(ports[1]));
    assert_eq!(tcp_port_exchange(ports[2], b""), "served\n");
    assert!(closed_at_once(ports[3]));
    assert!(s.wait_log("denied: refused 127.0.0.1:"));
    let log = s.log_text();
    assert!(log.contains(" (deny list)"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("elsewhere: refused 127.0.0.1:")
                && l.ends_with("(not in allow list)")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("denywins: refused 127.0.0.1:") && l.ends_with("(deny list)")),
        "{log}"
    );
    for name in ["denied", "elsewhere", "denywins"] {
        assert!(
            !log.contains(&format!("{name}: started pid")),
            "{name} forked for a refused client"
        );
    }
}

#[test]
fn ipv6_clients_are_matched_against_ipv6_blocks() {
    if !ipv6_available() {
        skip(
            "ipv6_clients_are_matched_against_ipv6_blocks",
            "no ::1 on this machine",
        );
        return;
    }
    let (p1, p2) = (free_port(), free_port());
    let s = Summond::start(&format!(
        "[[service]]\nname = \"v6ok\"\nlisten = \"tcp://[::1]:{p1}\"\nexec = {}\nallow = [\"::1/128\"]\n\
         [[service]]\nname = \"v6no\"\nlisten = \"tcp://[::1]:{p2}\"\nexec = {}\nallow = [\"127.0.0.0/8\"]\n",
        sh("echo ok"),
        sh("echo no")
    ));
    let addr = |p: u16| std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, p));
    assert_eq!(tcp_exchange(addr(p1), b""), "ok\n");
    assert_eq!(
        tcp_exchange(addr(p2), b""),
        "",
        "an IPv4 block never matches an IPv6 client"
    );
    assert!(s.wait_log("v6no: refused [::1]:"));
}

#[test]
fn banner_comes_before_the_child_and_banner_fail_goes_to_refused_clients() {
    let (port, shut) = (free_port(), free_port());
    let _s = Summond::start(&format!(
        "[[service]]\nname = \"greet\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\nbanner = \"hello\\r\\n\"\nbanner_fail = \"busy\\r\\n\"\n\
         [[service]]\nname = \"shut\"\nlisten = \"tcp://127.0.0.1:{shut}\"\nexec = [\"cat\"]\ndeny = [\"127.0.0.0/8\"]\nbanner = \"never\\r\\n\"\nbanner_fail = \"go away\\r\\n\"\n",
        sh("echo from-child; cat")
    ));
    assert_eq!(
        tcp_port_exchange(port, b"typed\n"),
        "hello\r\nfrom-child\ntyped\n"
    );
    assert_eq!(
        tcp_port_exchange(shut, b""),
        "go away\r\n",
        "refused: banner_fail, then closed"
    );
}
