//! The JSON Schema of summond.toml (docs/summond.schema.json, written by
//! build.rs from the key table) as editors use it: the real taplo (npm's
//! @taplo/cli, which .ci/run installs in target/taplo) finds the sample,
//! the packaged config and every example valid through their `#:schema`
//! line, and flags a misspelt key, a wrong type, a bad choice and a value
//! of the wrong shape, naming the key; `summond --check` agrees on each
//! case, so the schema never flags what summond accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// taplo, from `SUMMOND_TAPLO` or where .ci/run installs it.
fn taplo(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("SUMMOND_TAPLO")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/taplo/node_modules/.bin/taplo"));
    if path.exists() {
        return Some(path);
    }
    skip(
        test,
        "taplo is not installed (.ci/run puts npm's @taplo/cli in target/taplo)",
    );
    None
}

/// `taplo check FILE...` (one run: taplo takes seconds to start): whether
/// it passed, and what it printed.
fn check(taplo: &Path, files: &[PathBuf]) -> (bool, String) {
    let dir = TempDir::new("taplo-cwd");
    let out = Command::new(taplo)
        .arg("check")
        .args(files)
        // No .taplo.toml of the repository's or anyone's: the file's own
        // `#:schema` line is all it goes by.
        .current_dir(&dir.0)
        .output()
        .expect("run taplo");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// taplo's errors about `file`: each `error: ...` block whose position
/// (`┌─ FILE:LINE:COL`) is in it.
fn errors_in(out: &str, file: &Path) -> Vec<String> {
    let at = format!("{}:", file.display());
    out.split("\nerror: ")
        .skip(1)
        .filter(|block| block.lines().nth(1).is_some_and(|l| l.contains(&at)))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_sample_and_every_example_are_valid_by_the_schema() {
    let Some(taplo) = taplo("the_sample_and_every_example_are_valid_by_the_schema") else {
        return;
    };
    let mut files = vec![root().join("conf/summond.toml")];
    for entry in std::fs::read_dir(root().join("conf/examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    assert!(files.len() > 2, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let first = text.lines().next().unwrap_or_default();
        // Without the line taplo checks the syntax only, and passes.
        let target = first
            .strip_prefix("#:schema ")
            .unwrap_or_else(|| panic!("{}: no `#:schema` line first", file.display()));
        let schema = file.parent().unwrap().join(target);
        assert_eq!(
            schema.canonicalize().unwrap(),
            root()
                .join("docs/summond.schema.json")
                .canonicalize()
                .unwrap(),
            "{}",
            file.display()
        );
    }
    // The packaged config names the installed schema: checked here with
    // that line pointing to docs/ (test-deb.sh checks it installed).
    let packaged = std::fs::read_to_string(root().join("packaging/summond.toml")).unwrap();
    let installed = "#:schema /usr/share/summond/summond.schema.json\n";
    assert!(packaged.starts_with(installed), "{packaged}");
    let dir = TempDir::new("schema-packaged");
    let copy = dir.path("summond.toml");
    std::fs::write(&copy, packaged.replacen(installed, &directive(), 1)).unwrap();
    files.push(copy);
    let (ok, out) = check(&taplo, &files);
    assert!(ok, "{files:?}:\n{out}");
}

fn directive() -> String {
    format!(
        "#:schema {}\n",
        root().join("docs/summond.schema.json").display()
    )
}

/// A file of one service (and a `[daemon]` table) with `service` as the
/// keys after its name.
fn config(daemon: &str, service: &str) -> String {
    format!(
        "{}[daemon]\nmax_children = 8\n{daemon}\n[[service]]\nname = \"s\"\n{service}\n",
        directive()
    )
}

const GOOD: &[&str] = &[
    "listen = \"tcp://[::1]:7\"\nexec = [\"cat\"]",
    "listen = [\"tcp://127.0.0.1:7\", { address = \"unix://@summond-schema-test\", name = \"x\" }]\nexec = [\"cat\"]\npass = \"listen_fds\"\naccept = false",
    "listen = \"tcp://127.0.0.1:7\"\nexec = [\"internal:echo\"]\nrate = \"10/1m\"\nidle_timeout = \"90\"",
    "listen = \"tcp://0.0.0.0:7\"\nexec = [\"cat\", \"-u\"]\nmax_runtime = \"500ms\"\n\
     per_source_rate = \"5/2h\"\nper_source_prefix = { v4 = 24, v6 = 48 }\nrlimits = { nofile = 64, as = \"512M\" }\n\
     env = { A = \"b\" }\numask = \"0022\"\nallow = [\"127.0.0.0/8\", \"::1\"]\nstderr = \"null\"\nbacklog = 16",
    "listen = \"unix:///tmp/summond-schema-test/s.sock\"\nexec = [\"cat\"]\nsocket_mode = \"0660\"\nruntime_directory = \"summond-schema-test\"\ndisabled = true",
];

/// (daemon keys, service keys, what taplo's messages must name).
const BAD: &[(&str, &str, &str)] = &[
    (
        "",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\nmax_instance = 3",
        "'max_instance' was unexpected",
    ),
    (
        "max_childen = 3",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]",
        "'max_childen' was unexpected",
    ),
    (
        "",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\nmax_instances = \"3\"",
        "max_instances = \"3\"",
    ),
    (
        "",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\nkeepalive = \"yes\"",
        "keepalive = \"yes\"",
    ),
    (
        "",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\npass = \"fds\"",
        "\"fds\" is not one of [\"stdio\",\"listen_fds\"]",
    ),
    (
        "log_format = \"xml\"",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]",
        "log_format = \"xml\"",
    ),
    (
        "",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\nmax_runtime = \"5 min\"",
        "max_runtime = \"5 min\"",
    ),
    (
        "",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\nrate = \"10 per second\"",
        "rate = \"10 per second\"",
    ),
    (
        "",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\numask = \"0999\"",
        "umask = \"0999\"",
    ),
    (
        "",
        "listen = \"127.0.0.1:7\"\nexec = [\"cat\"]",
        "listen = \"127.0.0.1:7\"",
    ),
    (
        "",
        "listen = { address = \"tcp://127.0.0.1:7\", nmae = \"x\" }\nexec = [\"cat\"]",
        "nmae",
    ),
    ("", "listen = \"tcp://127.0.0.1:7\"\nexec = []", "exec = []"),
    (
        "",
        "listen = \"tcp://127.0.0.1:7\"",
        "\"exec\" is a required property",
    ),
    (
        "",
        "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]\nper_source_prefix = { v4 = 24, v5 = 8 }",
        "'v5' was unexpected",
    ),
];

#[test]
fn taplo_flags_what_the_checker_refuses_and_passes_what_it_accepts() {
    let Some(taplo) = taplo("taplo_flags_what_the_checker_refuses_and_passes_what_it_accepts")
    else {
        return;
    };
    let dir = TempDir::new("schema-cases");
    let mut good = Vec::new();
    for (i, service) in GOOD.iter().enumerate() {
        let file = dir.path(&format!("good{i}.toml"));
        std::fs::write(&file, config("", service)).unwrap();
        let (code, _, err) = run_to_exit(&["--check", "-c", file.to_str().unwrap()]);
        assert_eq!(code, 0, "summond refused:\n{service}\n{err}");
        good.push(file);
    }
    let (ok, out) = check(&taplo, &good);
    assert!(ok, "taplo refused one of {GOOD:?}:\n{out}");

    let mut top = config("", "listen = \"tcp://127.0.0.1:7\"\nexec = [\"cat\"]");
    top.push_str("[services]\nname = \"t\"\n");
    let cases: Vec<(String, &str)> = BAD
        .iter()
        .map(|(daemon, service, named)| (config(daemon, service), *named))
        .chain([(top, "'services' was unexpected")])
        .collect();
    let mut bad = Vec::new();
    for (i, (text, _)) in cases.iter().enumerate() {
        let file = dir.path(&format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, _, _) = run_to_exit(&["--check", "-c", file.to_str().unwrap()]);
        assert_eq!(code, 2, "summond accepted:\n{text}");
        bad.push(file);
    }
    let (ok, out) = check(&taplo, &bad);
    assert!(!ok, "taplo passed them all:\n{out}");
    for ((text, named), file) in cases.iter().zip(&bad) {
        let errors = errors_in(&out, file);
        assert!(
            errors.iter().any(|e| e.contains(named)),
            "taplo did not say {named:?} of\n{text}\nbut: {errors:#?}"
        );
    }
}
