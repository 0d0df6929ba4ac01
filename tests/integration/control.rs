//! The status socket and `summond status`: one row per service with
//! counters that follow what happened (served, refused, failed, last exit,
//! active children), as a table or as JSON.

use std::os::unix::fs::PermissionsExt;

use crate::util::*;

#[test]
fn status_reports_what_each_service_did() {
    let (pe, pd, pf, ph) = (free_port(), free_port(), free_port(), free_port());
    let dir = TempDir::new("status");
    let gone = dir.path("gone");
    std::fs::copy("/bin/true", &gone).unwrap();
    let control = dir.path("control.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{}\
                 [[service]]\nname = \"echo\"\nlisten = \"tcp://127.0.0.1:{pe}\"\nexec = [\"cat\"]\n\
                 [[service]]\nname = \"denied\"\nlisten = \"tcp://127.0.0.1:{pd}\"\nexec = [\"cat\"]\ndeny = [\"127.0.0.0/8\"]\n\
                 [[service]]\nname = \"broken\"\nlisten = \"tcp://127.0.0.1:{pf}\"\nexec = [{}]\n\
                 [[service]]\nname = \"held\"\nlisten = \"tcp://127.0.0.1:{ph}\"\nexec = {}\n",
                daemon_control(&control),
                toml_str(gone.to_str().unwrap()),
                sh("echo in; read x")
            ),
            ..Start::default()
        },
    );
    let mode = std::fs::metadata(&control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    for _ in 0..3 {
        assert_eq!(tcp_port_exchange(pe, b"x"), "x");
    }
    assert!(closed_at_once(pd));
    std::fs::remove_file(&gone).unwrap();
    assert!(closed_at_once(pf));
    assert!(s.wait_log("broken: exec "));
    let held = connect_tcp(([127, 0, 0, 1], ph).into());
    assert_eq!(read_line(&held), "in\n");
    assert!(wait_until(TIMEOUT, || s.log_count("echo: pid ") == 3));

    let config = s.config.to_str().unwrap().to_string();
    let (code, out, err) = run_to_exit(&["status", "-c", &config, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let svc = |name: &str| {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(v["pid"], s.pid());
    assert_eq!(
        (
            svc("echo")["served"].as_u64(),
            svc("echo")["active"].as_u64()
        ),
        (Some(3), Some(0))
    );
    assert_eq!(svc("echo")["last_exit"], "exited with status 0");
    assert_eq!(svc("echo")["mode"], "accept/stdio");
    assert_eq!(svc("echo")["addresses"][0], format!("tcp://127.0.0.1:{pe}"));
    assert_eq!(
        (
            svc("denied")["refused"].as_u64(),
            svc("denied")["served"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(svc("broken")["spawn_failures"].as_u64(), Some(1));
    assert_eq!(svc("denied")["top_refused"][0]["source"], "127.0.0.1");
    assert!(svc("echo").get("paused").is_none(), "serving: no pause");
    assert_eq!(svc("held")["active"].as_u64(), Some(1));
    assert_eq!(v["children"].as_u64(), Some(1));

    let (code, table, _) = run_to_exit(&["status", "--control", control.to_str().unwrap()]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert_eq!(
        lines[5], "denied: most refused: 127.0.0.1 (1)",
        "under the table: who was refused most\n{table}"
    );
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("ACTIVE")
            && lines[0].ends_with("LAST EXIT"),
        "{table}"
    );
    let echo: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("echo "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &echo[..7],
        [
            "echo",
            &format!("tcp://127.0.0.1:{pe}"),
            "accept/stdio",
            "0",
            "3",
            "0",
            "0"
        ]
    );
}

#[test]
fn status_without_a_control_socket_says_what_to_do() {
    let dir = TempDir::new("nostatus");
    let config = dir.path("c.toml");
    std::fs::write(&config, "").unwrap();
    let (code, _, err) = run_to_exit(&["status", "-c", config.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("sets no [daemon] control socket"), "{err}");
    let (code, _, err) = run_to_exit(&[
        "status",
        "--control",
        dir.path("none.sock").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("is summond running?"), "{err}");
}

#[test]
fn last_exit_follows_every_change_of_outcome() {
    let port = free_port();
    let dir = TempDir::new("last-exit");
    let control = dir.path("control.sock");
    let s = Summond::start_in(
        dir,
        Start {
            config: &format!(
                "{}[[service]]\nname = \"x\"\nlisten = \"tcp://127.0.0.1:{port}\"\nexec = {}\n",
                daemon_control(&control),
                sh("read code; exit $code")
            ),
            ..Start::default()
        },
    );
    for (n, code) in ["0", "3", "3", "0"].iter().enumerate() {
        tcp_port_exchange(port, format!("{code}\n").as_bytes());
        assert!(wait_until(TIMEOUT, || s.log_count("x: pid ") == n + 1));
        let st = status_json(&control);
        assert_eq!(
            st["services"][0]["last_exit"],
            format!("exited with status {code}"),
            "after exit {n}"
        );
    }
}
