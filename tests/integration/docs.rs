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
    assert!(script.contains("wrap") && script.contains("--check"));
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
