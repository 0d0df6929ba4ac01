//! The manual pages and completions written at build time: man renders
//! each page without a warning, summond.toml(5) lists every key the
//! checker knows, summond(8) every subcommand, and each shell accepts its
//! completion script.

use std::path::{Path, PathBuf};
use std::process::Command;

use summond::config::{DAEMON_KEYS, LISTEN_TABLE_KEYS, SERVICE_KEYS};

use crate::util::*;

fn built(dir: &str, name: &str) -> PathBuf {
    let p = Path::new(BIN).parent().unwrap().join(dir).join(name);
    assert!(p.exists(), "{} was not written by the build", p.display());
    p
}

/// The page as a reader sees it, with man's warnings.
fn render(page: &Path) -> Option<(String, String)> {
    if !Path::new("/usr/bin/man").exists() {
        skip("man pages", "man (man-db) is not installed");
        return None;
    }
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(page)
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "man -l {}", page.display());
    Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn every_page_renders_without_warnings() {
    for page in [
        "summond.8",
        "summond-status.8",
        "summond-reload.8",
        "summond-pause.8",
        "summond-resume.8",
        "summond-restart.8",
        "summond-wrap.8",
        "summond.toml.5",
    ] {
        if let Some((text, warnings)) = render(&built("man", page)) {
            assert!(warnings.trim().is_empty(), "{page}: {warnings}");
            assert!(text.contains("NAME"), "{page}: {text}");
        }
    }
}

#[test]
fn summond_toml_5_documents_every_key_the_checker_knows() {
    let Some((text, _)) = render(&built("man", "summond.toml.5")) else {
        return;
    };
    for key in DAEMON_KEYS
        .iter()
        .chain(SERVICE_KEYS)
        .chain(LISTEN_TABLE_KEYS)
    {
        let entry = format!("\n       {key} = ");
        assert!(
            text.contains(&entry),
            "summond.toml(5) does not document `{key}`"
        );
    }
}

#[test]
fn summond_8_lists_the_options_and_subcommands() {
    let Some((text, _)) = render(&built("man", "summond.8")) else {
        return;
    };
    for needle in [
        "--check",
        "--pidfile",
        "--log-level",
        "summond-status(8)",
        "summond-reload(8)",
        "summond-pause(8)",
        "summond-resume(8)",
        "summond-restart(8)",
        "summond-wrap(8)",
        "SIGHUP",
        "EXIT STATUS",
    ] {
        assert!(text.contains(needle), "summond(8) lacks {needle}");
    }
}

#[test]
fn each_shell_accepts_its_completion_script() {
    let bash = built("completions", "summond.bash");
    let script = std::fs::read_to_string(&bash).unwrap();
    for word in ["wrap", "--check", "reload", "pause", "resume", "restart"] {
        assert!(script.contains(word), "the bash completion lacks {word}");
    }
    let out = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (shell, file) in [("zsh", "_summond"), ("fish", "summond.fish")] {
        let path = built("completions", file);
        let Ok(out) = Command::new(shell).arg("-n").arg(&path).output() else {
            skip(
                "each_shell_accepts_its_completion_script",
                &format!("{shell} is not installed"),
            );
            continue;
        };
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The Markdown pages build.rs writes beside the man pages
/// (`target/<profile>/docs`), and the copies committed under `docs/` for
/// readers on the web: each copy must be what src/cli.rs and
/// src/config/keys.rs give now, and no page the build no longer writes
/// may stay. `SUMMOND_WRITE_DOCS=1` rewrites the copies instead.
#[test]
fn committed_markdown_pages_are_what_the_definitions_give() {
    let generated = Path::new(BIN).parent().unwrap().join("docs");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let write = std::env::var_os("SUMMOND_WRITE_DOCS").is_some_and(|v| v == "1");
    let mut names = Vec::new();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&generated).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let text = std::fs::read_to_string(generated.join(&name)).unwrap();
        if std::fs::read_to_string(committed.join(&name)).ok().as_ref() != Some(&text) {
            if write {
                std::fs::write(committed.join(&name), &text).unwrap();
            } else {
                stale.push(format!("docs/{name}"));
            }
        }
        names.push(name);
    }
    assert!(
        names.contains(&"summond.toml.5.md".to_string()),
        "{names:?}"
    );
    for entry in std::fs::read_dir(&committed).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let generated_page = name.ends_with(".5.md") || name.ends_with(".8.md");
        if generated_page && !names.contains(&name) {
            if write {
                std::fs::remove_file(committed.join(&name)).unwrap();
            } else {
                stale.push(format!("docs/{name} (no longer generated)"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "pages not what src/cli.rs and src/config/keys.rs give now: {}; \
         rewrite them with `SUMMOND_WRITE_DOCS=1 cargo test --test integration docs::` \
         and commit the result",
        stale.join(", ")
    );
}

/// Every relative link in README.md, docs/ and benches/README.md names a
/// file of the repository, and a `#fragment` a heading of that page (as
/// GitHub makes its anchor).
#[test]
fn relative_links_in_the_docs_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md"), root.join("benches/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            let shown = format!("{}: {target}", page.strip_prefix(root).unwrap().display());
            if !file.exists() {
                broken.push(format!("{shown} (no such file)"));
                continue;
            }
            if let Some(fragment) = fragment {
                let anchors = std::fs::read_to_string(&file)
                    .map(|t| heading_anchors(&t))
                    .unwrap_or_default();
                if !anchors.iter().any(|a| a == fragment) {
                    broken.push(format!("{shown} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of the page's `[text](target)` links, outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans: what is between backticks is not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

/// The anchors GitHub gives the page's headings: lower case, spaces as
/// `-`, every character but letters, digits, `_` and `-` left out.
fn heading_anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let anchor: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.push(anchor);
    }
    out
}
