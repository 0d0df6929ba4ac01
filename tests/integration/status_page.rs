//! The status page at `GET /` on the metrics listener, read by curl (the
//! headers, HEAD, 404 and 405) and rendered by a real browser, Debian's
//! chromium headless (`--dump-dom`: the DOM after parsing, as the
//! browser built it): a row per service with its state, children,
//! connections, refusals by reason, last exit and a forward backend's
//! state; and a hostile name (which the config never lets through, so it
//! is given to the renderer directly) stays text, creating no element.

use std::path::Path;
use std::process::Command;

use crate::util::*;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The DOM chromium builds from `url`, with the flags this machine needs
/// (no sandbox as root, no network of its own) and a fresh profile in
/// `profile`; bounded by `timeout`.
fn dump_dom(url: &str, profile: &Path) -> String {
    let out = Command::new("timeout")
        .args([
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .args([
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
        ])
        .args(["--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl -i` (head and body) of `args`, and the status code.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (all, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (all.to_string(), code.to_string())
}

/// The `<tr>` of `service` in a page or DOM.
fn row<'a>(dom: &'a str, service: &str) -> &'a str {
    let at = dom
        .find(&format!("data-service=\"{service}\""))
        .unwrap_or_else(|| panic!("no row for {service}:\n{dom}"));
    let end = dom[at..].find("</tr>").map_or(dom.len(), |e| at + e);
    &dom[at..end]
}

#[test]
fn the_status_page_shows_each_service_in_a_real_browser() {
    if !have("chromium") || !have("python3") {
        return skip(
            "status page in chromium",
            "chromium or python3 is not installed",
        );
    }
    let [echo, shut, off, day, web, backend, mport] = [(); 7].map(|_| free_port());
    let dir = TempDir::new("status-page");
    let control = dir.path("control.sock");
    std::fs::create_dir(dir.path("www")).unwrap();
    std::fs::write(dir.path("www/file"), b"hello\n").unwrap();
    let config = format!(
        "{}metrics = \"tcp://127.0.0.1:{mport}\"\n\
         [[service]]\nname = \"echo\"\nlisten = \"tcp://127.0.0.1:{echo}\"\nexec = [\"cat\"]\n\
         [[service]]\nname = \"shut\"\nlisten = \"tcp://127.0.0.1:{shut}\"\nexec = [\"cat\"]\ndeny = [\"127.0.0.0/8\"]\n\
         [[service]]\nname = \"off\"\nlisten = \"tcp://127.0.0.1:{off}\"\nexec = [\"cat\"]\ndisabled = true\n\
         [[service]]\nname = \"day\"\nlisten = \"tcp://127.0.0.1:{day}\"\nexec = [\"internal:daytime\"]\n\
         [[service]]\nname = \"web\"\nlisten = \"tcp://127.0.0.1:{web}\"\n\
         exec = [\"python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"--directory\", \"{{dir}}/www\", \"{backend}\"]\n\
         forward = \"tcp://127.0.0.1:{backend}\"\nstderr = \"null\"\n",
        daemon_control(&control)
    );
    let s = Summond::start_in(
        dir,
        Start {
            config: &config,
            ..Start::default()
        },
    );
    assert_eq!(tcp_port_exchange(echo, b"x\n"), "x\n");
    assert!(closed_at_once(shut));
    let (all, code) = curl(&[&format!("http://127.0.0.1:{web}/file")]);
    assert_eq!(code, "200", "{all}");
    assert!(wait_until(TIMEOUT, || s.log_count("echo: pid ") == 1));
    let (code, _, err) = run_to_exit(&["pause", "echo", "--control", control.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    // The answer's head, by curl.
    let url = format!("http://127.0.0.1:{mport}/");
    let (page, code) = curl(&[&url]);
    assert_eq!(code, "200", "{page}");
    let head = page.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    for h in [
        "content-type: text/html; charset=utf-8",
        "content-security-policy: default-src 'none'; style-src 'unsafe-inline'",
        "x-content-type-options: nosniff",
    ] {
        assert!(head.contains(h), "{h} missing:\n{head}");
    }
    let (headed, code) = curl(&["-I", &url]);
    assert_eq!(code, "200");
    assert!(!headed.contains("<table"), "HEAD got a body:\n{headed}");
    for (args, want) in [
        (vec![format!("http://127.0.0.1:{mport}/index.html")], "404"),
        (vec!["-X".into(), "POST".into(), url.clone()], "405"),
        (vec![format!("http://127.0.0.1:{mport}/metrics")], "200"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl(&args).1, want, "{args:?}");
    }

    // The page as chromium builds it.
    let profile = TempDir::new("chromium-profile");
    let dom = dump_dom(&url, &profile.0);
    assert!(dom.contains("http-equiv=\"refresh\""), "{dom}");
    assert!(dom.contains("5 services"), "{dom}");
    let r = row(&dom, "echo");
    assert!(r.contains("paused (until summond resume)"), "{r}");
    assert!(r.contains("<td class=\"connections n\">1</td>"), "{r}");
    assert!(r.contains("exited with status 0"), "{r}");
    let r = row(&dom, "shut");
    assert!(r.contains("<td class=\"refused\">access 1</td>"), "{r}");
    assert!(r.contains("<td class=\"state\">serving</td>"), "{r}");
    assert!(row(&dom, "off").contains("<td class=\"state\">disabled</td>"));
    assert!(row(&dom, "day").contains("<td class=\"mode\">internal</td>"));
    let r = row(&dom, "web");
    assert!(r.contains("backend ready, pid "), "{r}");
    assert!(r.contains("ready in "), "{r}");
    assert!(r.contains("1 relayed"), "{r}");
}

#[test]
fn a_hostile_name_stays_text_in_a_real_browser() {
    use summond::metrics::ServiceFigures;
    use summond::stats::Histogram;
    if !have("chromium") {
        return skip(
            "status page escaping in chromium",
            "chromium is not installed",
        );
    }
    let h = Histogram::default();
    let hostile = "\"><script>document.title='owned'</script><b id=x>";
    let figures = [ServiceFigures {
        name: hostile,
        mode: "accept/stdio",
        connections: 1,
        children: 0,
        refused: Default::default(),
        spawn_failures: 0,
        exits: Default::default(),
        durations: &h,
        paused: None,
        backend: None,
        last_exit: Some("<img src=x onerror=alert(1)>'"),
        ready_children: None,
        health_checks: None,
    }];
    let page = summond::status_page::render(&figures, std::time::Instant::now());
    let dir = TempDir::new("status-page-hostile");
    let file = dir.path("page.html");
    std::fs::write(&file, page).unwrap();
    let profile = TempDir::new("chromium-profile");
    let dom = dump_dom(&format!("file://{}", file.display()), &profile.0);
    // One row, no element the text would have made, and the text shown.
    assert!(dom.contains("<title>summond status</title>"), "{dom}");
    for element in ["<script", "<b ", "<img"] {
        assert!(!dom.contains(element), "{element} made an element:\n{dom}");
    }
    assert!(
        dom.contains("&lt;script&gt;document.title='owned'&lt;/script&gt;&lt;b id=x&gt;"),
        "{dom}"
    );
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;'"), "{dom}");
}
