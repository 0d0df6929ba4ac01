//! The status page at `GET /` on `[daemon] metrics`: one HTML table, a row
//! per service, rendered from the same figures as the metrics page
//! (`metrics::ServiceFigures`), so a pause, a refusal reason or a backend
//! reads as status and metrics say it (`Pause::describe`,
//! `RefusalKind::label`, `BackendStatus`'s `Display`). Readable without
//! script (there is none, and the answer's Content-Security-Policy
//! forbids any), refreshing itself with a `<meta>` refresh. Every value is
//! escaped for both text and attribute places. Pure: no I/O.

use std::fmt::{self, Write as _};
use std::time::Instant;

use crate::metrics::ServiceFigures;
use crate::stats::Pause;

/// Seconds between the page's own reloads.
pub const REFRESH_SECONDS: u32 = 5;

/// The headers the page is served with, besides Content-Type: no script,
/// no frame, no fetch, inline style only; no sniffing, no caching, no
/// referrer.
pub const HEADERS: &str = "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'\r\n\
X-Content-Type-Options: nosniff\r\n\
X-Frame-Options: DENY\r\n\
Referrer-Policy: no-referrer\r\n\
Cache-Control: no-store\r\n";

pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// `text` with `& < > " '` as character references: safe between tags
/// and inside a quoted attribute.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1em}\
table{border-collapse:collapse}\
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}\
td.n{text-align:right}\
tr.paused td.state,tr.held td.state{color:#a60}\
tr.disabled{color:#888}";

const COLUMNS: [&str; 8] = [
    "service",
    "mode",
    "state",
    "children",
    "connections",
    "refused",
    "last exit",
    "backend",
];

/// A service's state word (the row's class) and, paused, why.
fn state(s: &ServiceFigures<'_>, now: Instant) -> (&'static str, Option<String>) {
    match (&s.paused, s.mode) {
        (_, "disabled") => ("disabled", None),
        (Some(p @ Pause::CrashHold { .. }), _) => ("held", Some(p.describe(now))),
        (Some(p), _) => ("paused", Some(p.describe(now))),
        (None, _) => ("serving", None),
    }
}

/// The page for `services` at `now`.
pub fn render(services: &[ServiceFigures<'_>], now: Instant) -> String {
    let mut out = String::with_capacity(1024 + services.len() * 512);
    let children: u64 = services.iter().map(|s| s.children).sum();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>summond status</title><style>{STYLE}</style></head><body>\n\
         <h1>summond</h1>\n<p id=\"summary\">{} services, {children} children</p>\n\
         <table><thead><tr>",
        services.len()
    );
    for c in COLUMNS {
        let _ = write!(out, "<th>{c}</th>");
    }
    out.push_str("</tr></thead><tbody>\n");
    for s in services {
        row(&mut out, s, now);
    }
    out.push_str("</tbody></table>\n</body></html>\n");
    out
}

fn row(out: &mut String, s: &ServiceFigures<'_>, now: Instant) {
    let (word, why) = state(s, now);
    let name = Escaped(s.name);
    let _ = write!(
        out,
        "<tr class=\"{word}\" data-service=\"{name}\"><td class=\"name\">{name}</td>\
         <td class=\"mode\">{}</td><td class=\"state\">{word}",
        Escaped(s.mode)
    );
    if let Some(why) = why {
        let _ = write!(out, " ({})", Escaped(&why));
    }
    let _ = write!(
        out,
        "</td><td class=\"children n\">{}</td><td class=\"connections n\">{}</td>\
         <td class=\"refused\">",
        s.children, s.connections
    );
    refusals(out, s);
    let _ = write!(
        out,
        "</td><td class=\"exit\">{}</td><td class=\"backend\">",
        Escaped(s.last_exit.unwrap_or("-"))
    );
    match &s.backend {
        Some(b) => {
            let _ = write!(out, "{}", Escaped(&b.to_string()));
        }
        None => out.push('-'),
    }
    out.push_str("</td></tr>\n");
}

/// `reason n` for each reason with refusals, or `0`.
fn refusals(out: &mut String, s: &ServiceFigures<'_>) {
    let mut any = false;
    for (kind, n) in s.refused.iter().filter(|(_, n)| *n > 0) {
        if any {
            out.push_str(", ");
        }
        let _ = write!(out, "{} {n}", kind.label());
        any = true;
    }
    if !any {
        out.push('0');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Histogram;
    use std::time::Duration;

    fn figures<'a>(name: &'a str, h: &'a Histogram) -> ServiceFigures<'a> {
        ServiceFigures {
            name,
            mode: "accept/stdio",
            connections: 7,
            children: 2,
            refused: [1, 0, 0, 3, 0, 0].into(),
            spawn_failures: 0,
            exits: Default::default(),
            durations: h,
            paused: None,
            backend: None,
            last_exit: Some("exited with status 0"),
            ready_children: None,
            health_checks: None,
        }
    }

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            Escaped("<script>alert(\"x\")</script>&'").to_string(),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(Escaped("plain").to_string(), "plain");
    }

    #[test]
    fn a_hostile_name_and_exit_text_stay_text() {
        let h = Histogram::default();
        let mut f = figures("\"><script>x()</script>", &h);
        f.last_exit = Some("<img src=x onerror=y()>");
        let page = render(&[f], Instant::now());
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("data-service=\"&quot;&gt;&lt;script&gt;"));
    }

    #[test]
    fn rows_say_state_refusals_and_backend() {
        let h = Histogram::default();
        let now = Instant::now();
        let mut held = figures("held", &h);
        held.paused = Some(Pause::CrashHold {
            until: now + Duration::from_secs(8),
        });
        let mut user = figures("user", &h);
        user.paused = Some(Pause::User);
        let mut off = figures("off", &h);
        off.mode = "disabled";
        let mut fwd = figures("fwd", &h);
        fwd.mode = "forward";
        fwd.backend = Some(crate::control::BackendStatus {
            state: "ready".into(),
            pid: Some(42),
            ready_us: Some(1500),
            status: Some("<b>up</b>".into()),
            ..Default::default()
        });
        let page = render(&[held, user, off, fwd], now);
        assert!(page.contains("<td class=\"state\">held (crash hold, 8.0s left)</td>"));
        assert!(page.contains("<td class=\"state\">paused (until summond resume)</td>"));
        assert!(page.contains("<tr class=\"disabled\" data-service=\"off\">"));
        assert!(page.contains("<td class=\"refused\">access 1, proxy 3</td>"));
        assert!(page.contains("backend ready, pid 42, ready in 1.5 ms"));
        assert!(page.contains("down, &quot;&lt;b&gt;up&lt;/b&gt;&quot;</td>"));
        assert!(page.contains("<p id=\"summary\">4 services, 8 children</p>"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    }
}
