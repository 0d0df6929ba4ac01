//! Config mistakes as values: what went wrong (`ErrorKind`) and where
//! (`ConfigError` prints `PATH:LINE:COL: message`, or `PATH: service "x":
//! message` when no position applies), collected per load.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annotate_snippets::{AnnotationKind, Level, Renderer, Snippet};

use crate::access::CidrError;
use crate::addr::{AddrError, ListenAddr};

#[derive(Debug)]
pub enum ErrorKind {
    Read(std::io::Error),
    Syntax(String),
    UnknownKey {
        key: String,
        section: &'static str,
        expected: &'static [&'static str],
        /// The known key it is closest to, if one is close.
        suggestion: Option<&'static str>,
    },
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    Missing {
        key: &'static str,
    },
    Invalid {
        key: &'static str,
        reason: String,
    },
    Address(AddrError),
    Cidr {
        key: &'static str,
        err: CidrError,
    },
    DuplicateName {
        name: String,
        first_line: usize,
        /// Set when the first definition is in another file.
        first_file: Option<PathBuf>,
    },
    AddressTaken {
        addr: ListenAddr,
        other: String,
    },
    AcceptOnDatagram {
        addr: ListenAddr,
    },
    NeedsAccept {
        key: &'static str,
    },
    AccessOnUnix {
        key: &'static str,
    },
    ProgramNotFound {
        name: String,
    },
    ProgramRelative {
        path: String,
    },
    ProgramNotExecutable {
        path: PathBuf,
        why: &'static str,
    },
    UnknownUser(String),
    UnknownGroup(String),
    NotRoot {
        key: &'static str,
    },
    ReservedEnv {
        key: &'static str,
        name: String,
    },
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ErrorKind::*;
        match self {
            Read(e) => write!(f, "cannot read config: {e}"),
            Syntax(m) => write!(f, "TOML syntax: {m}"),
            UnknownKey {
                key,
                section,
                suggestion: Some(close),
                ..
            } => write!(f, "unknown key `{key}` in {section}; did you mean `{close}`?"),
            UnknownKey {
                key,
                section,
                expected,
                suggestion: None,
            } => write!(
                f,
                "unknown key `{key}` in {section} (expected one of: {})",
                expected.join(", ")
            ),
            WrongType {
                key,
                expected,
                found,
            } => write!(f, "`{key}` must be {expected}, found {found}"),
            Missing { key } => write!(f, "missing required key `{key}`"),
            Invalid { key, reason } => write!(f, "`{key}`: {reason}"),
            Address(e) => write!(f, "`listen`: {e}"),
            Cidr { key, err } => write!(f, "`{key}`: {err}"),
            DuplicateName {
                name,
                first_line,
                first_file: None,
            } => write!(
                f,
                "duplicate service name \"{name}\" (first defined at line {first_line})"
            ),
            DuplicateName {
                name,
                first_line,
                first_file: Some(file),
            } => write!(
                f,
                "duplicate service name \"{name}\" (first defined at {}:{first_line})",
                file.display()
            ),
            AddressTaken { addr, other } => {
                write!(f, "address {addr} is already used by service \"{other}\"")
            }
            AcceptOnDatagram { addr } => write!(
                f,
                "`accept = true` is impossible on datagram socket {addr}: nothing to accept, \
                 the service must read the datagrams itself (accept = false)"
            ),
            NeedsAccept { key } => write!(
                f,
                "`{key}` needs `accept = true`: with accept = false the child accepts \
                 connections, so summond could never apply it"
            ),
            AccessOnUnix { key } => write!(
                f,
                "`{key}` filters IP addresses and cannot apply to a unix socket"
            ),
            ProgramNotFound { name } => write!(f, "`exec`: \"{name}\" not found in PATH"),
            ProgramRelative { path } => write!(
                f,
                "`exec`: \"{path}\" must be an absolute path or a bare name looked up in PATH"
            ),
            ProgramNotExecutable { path, why } => {
                write!(f, "`exec`: {} {why}", path.display())
            }
            UnknownUser(u) => write!(f, "`user`: no such user \"{u}\""),
            UnknownGroup(g) => write!(f, "`group`: no such group \"{g}\""),
            NotRoot { key } => write!(
                f,
                "`{key}` needs summond to run as root (it cannot change a child's identity otherwise)"
            ),
            ReservedEnv { key, name } if crate::env::is_set_by_summond(name) => write!(
                f,
                "`{key}`: {name} is set by summond itself and cannot be configured"
            ),
            // A client-family name summond does not set: removed from every
            // child's environment, so no child mistakes it for its client's.
            ReservedEnv { key, name } => write!(
                f,
                "`{key}`: {name} would describe the client, which only summond does; it cannot be configured"
            ),
        }
    }
}

/// One mistake in a config file. Prints `PATH:LINE:COL: message`, or
/// `PATH: service "x": message` when no position applies; `render` adds
/// the source line with a caret under the span.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub pos: Option<(usize, usize)>,
    pub service: Option<String>,
    pub kind: ErrorKind,
    /// Where in `source` the mistake is, for the caret.
    pub span: Option<Range<usize>>,
    /// The text of the file the error is in.
    pub source: Option<Arc<str>>,
}

impl ConfigError {
    /// An error about a whole file (no position).
    pub fn in_file(path: &Path, kind: ErrorKind) -> ConfigError {
        ConfigError {
            path: path.to_path_buf(),
            pos: None,
            service: None,
            kind,
            span: None,
            source: None,
        }
    }

    /// The first line (`PATH:LINE:COL: message`, what scripts match) and,
    /// where the error has a span, the source line with a caret under it,
    /// drawn by annotate-snippets as compilers draw theirs; ANSI colour
    /// with `color`.
    pub fn render(&self, color: bool) -> String {
        let mut out = self.to_string();
        if let (Some(span), Some(source)) = (&self.span, &self.source) {
            let span = clamp_span(source, span.clone());
            let report = &[Level::ERROR.no_name().primary_title("").element(
                Snippet::source(&**source).annotation(AnnotationKind::Primary.span(span)),
            )];
            let renderer = if color {
                Renderer::styled()
            } else {
                Renderer::plain()
            };
            out.push('\n');
            out.push_str(renderer.render(report).trim_end());
        }
        out
    }
}

/// A span on char boundaries, at least one char wide where the text
/// allows, so the caret always shows.
fn clamp_span(text: &str, span: Range<usize>) -> Range<usize> {
    let fix = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let start = fix(span.start);
    let mut end = fix(span.end.max(start));
    if end == start && start < text.len() {
        end = start + text[start..].chars().next().map_or(0, char::len_utf8);
    }
    start..end
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.path.display())?;
        match (self.pos, &self.service) {
            (Some((line, col)), _) => write!(f, "{line}:{col}: {}", self.kind),
            (None, Some(name)) => write!(f, " service \"{name}\": {}", self.kind),
            (None, None) => write!(f, " {}", self.kind),
        }
    }
}

impl std::error::Error for ConfigError {}

/// All the errors of one load, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// A file-level error with no position (unreadable, not TOML).
    pub(super) fn one(path: &Path, kind: ErrorKind) -> ConfigErrors {
        ConfigErrors(vec![ConfigError::in_file(path, kind)])
    }

    /// Every error rendered (`ConfigError::render`), one after another.
    pub fn render(&self, color: bool) -> String {
        let all: Vec<String> = self.0.iter().map(|e| e.render(color)).collect();
        all.join("\n")
    }
}

/// The candidate closest to `word`, if it is close enough to be a typo
/// (Damerau-Levenshtein distance at most a third of its length, and 2 at
/// the least).
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
