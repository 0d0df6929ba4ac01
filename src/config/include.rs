//! `[daemon] include`: glob patterns naming drop-in files, each holding
//! `[[service]]` entries merged into the main config. Relative patterns
//! are taken from the main file's directory; matches are read in sorted
//! order (so `10-x.toml` comes before `20-y.toml`, as in conf.d
//! directories everywhere). A pattern matching nothing is fine (an empty
//! conf.d); a matched file that cannot be read is an error naming it.
//! Wildcards skip names that start with a dot (editors' locks, backups).

use std::path::{Path, PathBuf};

use super::{ConfigError, ErrorKind};

/// The files `patterns` match, sorted and without repeats; problems with
/// a pattern or a directory on the way are pushed to `errors`.
pub(super) fn files(
    main: &Path,
    patterns: &[String],
    errors: &mut Vec<ConfigError>,
) -> Vec<PathBuf> {
    let base = match main.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        let full = if pattern.starts_with('/') {
            PathBuf::from(pattern)
        } else {
            base.join(pattern)
        };
        let Some(text) = full.to_str() else {
            continue;
        };
        // A wildcard never matches a leading dot: editors' locks
        // (`.#a.toml`) and hidden backups (`.old-a.toml`) sit beside the
        // drop-ins, and run-parts and systemd skip them too. A pattern
        // that spells the dot out still matches it.
        let options = glob::MatchOptions {
            require_literal_leading_dot: true,
            ..glob::MatchOptions::new()
        };
        let matches = match glob::glob_with(text, options) {
            Ok(m) => m,
            // The checker validated the pattern; a joined base path with
            // glob characters in it is the only way here.
            Err(e) => {
                errors.push(error(main, format!("\"{pattern}\": {}", e.msg)));
                continue;
            }
        };
        let mut found: Vec<PathBuf> = Vec::new();
        for m in matches {
            match m {
                Ok(p) if p.is_dir() => {}
                Ok(p) => found.push(p),
                Err(e) => errors.push(error(main, format!("\"{pattern}\": {e}"))),
            }
        }
        found.sort();
        for p in found {
            if !out.contains(&p) && p != main {
                out.push(p);
            }
        }
    }
    out
}

fn error(main: &Path, reason: String) -> ConfigError {
    ConfigError::in_file(
        main,
        ErrorKind::Invalid {
            key: "include",
            reason,
        },
    )
}
