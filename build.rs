//! Writes the manual pages and shell completions from the same definitions
//! the program uses: summond(8) and the bash, zsh and fish completions from
//! the clap command in src/cli.rs, summond.toml(5) from the key table in
//! src/config/keys.rs. They go to OUT_DIR and, for people and packages, to
//! `target/<profile>/man` and `target/<profile>/completions`; the same
//! pages as Markdown (build/markdown.rs) and the JSON Schema of
//! summond.toml (src/config/schema.rs, from the same key table) go to
//! `target/<profile>/docs`, which tests/integration/docs.rs compares with
//! the committed `docs/`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;
use roff::{bold, italic, roman, Roff};

/// What src/cli.rs takes from the crate, for including it here.
mod config {
    pub const DEFAULT_CONFIG_PATH: &str = "/etc/summond/summond.toml";
}

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

#[allow(dead_code)]
#[path = "src/config/keys.rs"]
mod keys;

#[allow(dead_code)]
#[path = "src/config/schema.rs"]
mod schema;

#[path = "build/markdown.rs"]
mod markdown;

/// A term and its text, one entry of a page's section.
type Item = (&'static str, &'static str);

/// The sections summond(8) has beyond what clap gives, in both forms.
const SUMMOND_8_SECTIONS: &[(&str, &[Item])] = &[
    (
        "SIGNALS",
        &[
            ("SIGHUP", "Re-read the config; sockets whose address stays are kept open, new ones are opened first; a config that fails to load keeps the old one."),
            ("SIGTERM, SIGINT", "Stop listening, remove created socket files and the pidfile, SIGTERM the accept = false children, leave connection children to finish; exit 0."),
            ("SIGCHLD", "Every child is reaped; there are never zombies."),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            ("0", "A clean stop, or --check found the config valid."),
            ("1", "A runtime failure: a socket that cannot be bound, a live unix socket in the way, a pidfile held by another instance."),
            ("2", "Bad usage or a bad config (every error is printed as PATH:LINE:COL: message)."),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            ("NOTIFY_SOCKET, WATCHDOG_USEC", "Under systemd Type=notify: READY=1, RELOADING=1, STOPPING=1, STATUS= and watchdog pings."),
            ("LISTEN_FDS, LISTEN_PID", "Sockets handed by a service manager are adopted for the listen addresses they match."),
            ("JOURNAL_STREAM", "When it names stderr, lines carry <N> priorities and no timestamps."),
            ("RUST_LOG", "The log filter when --log-level is not given."),
        ],
    ),
    (
        "FILES",
        &[(
            "/etc/summond/summond.toml",
            "The services file; see summond.toml(5).",
        )],
    ),
];

const SUMMOND_8_SEE_ALSO: &[&str] = &[
    "summond.toml(5)",
    "systemd.socket(5)",
    "inetd(8)",
    "xinetd(8)",
];

const SUMMOND_8_DESCRIPTION: &str =
    "One event loop holds every configured TCP, UDP and Unix socket. When a \
     client arrives, summond starts the program mapped to that socket and hands \
     the socket over: as stdin/stdout, the inetd way, or as LISTEN_FDS, the \
     systemd socket-activation protocol. The services are configured in one \
     TOML file; see summond.toml(5).";

const TOML_5_DESCRIPTION: &str =
    "A TOML file with an optional [daemon] table and one [[service]] table per service. \
     Every mistake is reported at once as PATH:LINE:COL: message, with the source line; \
     summond --check validates a file without binding anything.";

const TOML_5_EXAMPLE: &[&str] = &[
    "[daemon]",
    "max_children = 64",
    "control = \"/run/summond.sock\"",
    "",
    "[[service]]",
    "name = \"echo\"",
    "listen = \"tcp://127.0.0.1:7007\"",
    "exec = [\"cat\"]",
    "max_instances = 16",
];

/// The sections of `KEY_DOCS` and their titles in summond.toml(5).
const TOML_5_SECTIONS: &[(&str, &str)] = &[
    ("daemon", "[daemon] KEYS"),
    ("service", "[[service]] KEYS"),
    ("listen", "LISTEN TABLE KEYS"),
];

fn main() {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed=src/config/keys.rs");
    println!("cargo:rerun-if-changed=src/config/schema.rs");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/markdown.rs");
    link_hot_text();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is target/<profile>/build/summond-<hash>/out.
    let profile_dir = out.ancestors().nth(3).map(Path::to_path_buf);
    let mut dirs = vec![out.clone()];
    dirs.extend(profile_dir);
    for dir in &dirs {
        let man = dir.join("man");
        let completions = dir.join("completions");
        fs::create_dir_all(&man).expect("create man dir");
        fs::create_dir_all(&completions).expect("create completions dir");
        write_summond_8(&man.join("summond.8"));
        // summond-status(8), summond-wrap(8): the subcommands' own pages.
        let cmd = cli::command();
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("summond-{}", sub.get_name());
            // A 'static name, as clap's builder wants (a build script's
            // handful of strings).
            let sub = sub.clone().name(&*Box::leak(name.clone().into_boxed_str()));
            let mut buf = Vec::new();
            clap_mangen::Man::new(sub)
                .section("8")
                .render(&mut buf)
                .expect("render a subcommand page");
            fs::write(man.join(format!("{name}.8")), buf).expect("write a subcommand page");
        }
        write_summond_toml_5(&man.join("summond.toml.5"));
        write_markdown(&dir.join("docs"));
        // The JSON Schema editors check summond.toml with, beside the
        // Markdown pages (and so held to docs/ by the same test).
        fs::write(dir.join("docs/summond.schema.json"), schema::schema().text)
            .expect("write summond.schema.json");
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cli::command();
            clap_complete::generate_to(shell, &mut cmd, "summond", &completions)
                .expect("write completions");
        }
    }
}

/// The pages of `man/` as Markdown, named `PAGE.SECTION.md`.
fn write_markdown(docs: &Path) {
    fs::create_dir_all(docs).expect("create docs dir");
    // A page an earlier build wrote and this one does not (a subcommand
    // renamed) must not stay for the test to hold docs/ to.
    for entry in fs::read_dir(docs).expect("read docs dir").flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            fs::remove_file(entry.path()).expect("remove an old Markdown page");
        }
    }
    let main = cli::command().long_about(SUMMOND_8_DESCRIPTION);
    let mut pages = vec![(
        "summond.8.md".to_string(),
        markdown::command_page(main, "8", SUMMOND_8_SECTIONS, SUMMOND_8_SEE_ALSO),
    )];
    for sub in cli::command()
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
    {
        let name = format!("summond-{}", sub.get_name());
        let sub = sub.clone().name(&*Box::leak(name.clone().into_boxed_str()));
        pages.push((
            format!("{name}.8.md"),
            markdown::command_page(sub, "8", &[], &[]),
        ));
    }
    pages.push(("summond.toml.5.md".to_string(), markdown::toml_page()));
    for (file, text) in pages {
        fs::write(docs.join(file), text).expect("write a Markdown page");
    }
}

/// Release builds link the functions summond runs while serving next to
/// each other (link/hot-text.ld, made by benches/hot-text.sh): the kernel
/// maps code 64 kB around each page first touched, so a scattered serving
/// path kept about 1 MB of text resident in an idle summond. The script
/// only adds an output section to the linker's default script (`INSERT`),
/// which GNU ld and lld understand; `SUMMOND_HOT_TEXT=0` leaves it out for
/// a linker that does not.
fn link_hot_text() {
    println!("cargo:rerun-if-changed=link/hot-text.ld");
    println!("cargo:rerun-if-env-changed=SUMMOND_HOT_TEXT");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("PROFILE") != "release"
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || var("SUMMOND_HOT_TEXT") == "0"
    {
        return;
    }
    let script = Path::new(&var("CARGO_MANIFEST_DIR")).join("link/hot-text.ld");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}

fn write_summond_8(path: &Path) {
    let cmd = cli::command().long_about(SUMMOND_8_DESCRIPTION);
    let man = clap_mangen::Man::new(cmd).section("8");
    let mut buf = Vec::new();
    man.render_title(&mut buf).unwrap();
    man.render_name_section(&mut buf).unwrap();
    man.render_synopsis_section(&mut buf).unwrap();
    man.render_description_section(&mut buf).unwrap();
    man.render_options_section(&mut buf).unwrap();
    man.render_subcommands_section(&mut buf).unwrap();
    let mut extra = Roff::new();
    for (title, items) in SUMMOND_8_SECTIONS {
        section(&mut extra, title, items);
    }
    extra.control("SH", ["SEE ALSO"]);
    extra.text([roman(SUMMOND_8_SEE_ALSO.join(", "))]);
    buf.extend_from_slice(extra.render().as_bytes());
    man.render_version_section(&mut buf).unwrap();
    fs::write(path, buf).expect("write summond.8");
}

fn section(roff: &mut Roff, title: &str, items: &[Item]) {
    roff.control("SH", [title]);
    for (term, text) in items {
        roff.control("TP", []);
        roff.text([bold(*term)]);
        roff.text([roman(*text)]);
    }
}

fn write_summond_toml_5(path: &Path) {
    let mut r = Roff::new();
    r.control("TH", ["SUMMOND.TOML", "5", "", "summond", "File Formats"]);
    r.control("SH", ["NAME"]);
    r.text([roman("summond.toml - services file of summond(8)")]);
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(TOML_5_DESCRIPTION)]);
    r.control("SH", ["EXAMPLE"]);
    r.control("nf", []);
    for line in TOML_5_EXAMPLE {
        r.text([roman(*line)]);
    }
    r.control("fi", []);
    for (section, title) in TOML_5_SECTIONS {
        r.control("SH", [*title]);
        for d in keys::KEY_DOCS.iter().filter(|d| d.section == *section) {
            r.control("TP", []);
            r.text([bold(d.name), roman(" = "), italic(d.value)]);
            let mut text = d.text.to_string();
            if !d.default.is_empty() {
                text.push_str(&format!(" Default: {}.", d.default));
            }
            r.text([roman(text)]);
        }
    }
    r.control("SH", ["SEE ALSO"]);
    r.text([roman("summond(8)")]);
    let mut f = fs::File::create(path).expect("create summond.toml.5");
    f.write_all(r.render().as_bytes())
        .expect("write summond.toml.5");
}
