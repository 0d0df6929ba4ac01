//! `[daemon] include`: glob patterns naming drop-in files, each holding
//! `[[service]]` entries merged into the main config. Relative patterns
//! are taken from the main file's directory; matches are read in sorted
//! order (so `10-x.toml` comes before `20-y.toml`, as in conf.d
//! directories everywhere). A pattern matching nothing is fine (an empty
//! conf.d); a matched file that cannot be read is an error naming it.
//! A wildcard skips names that start with a dot (editors' locks, backups)
//! unless the pattern's part starts with a literal dot.
//!
//! The walk is ours, a directory per wildcard part, with glob's `Pattern`
//! matching one name at a time: a path is bytes on Linux, and the glob
//! crate's walk takes the pattern (base directory included) as UTF-8 and
//! cannot match, or with `require_literal_leading_dot` panics on, a name
//! that is not. The base directory is taken literally (glob characters in
//! it are no wildcards).
//!
//! A file is one file by identity, not by spelling: `conf.d/loop -> ..`,
//! `*/../other/x.toml` or a symlinked config directory name one file
//! many ways. Matches are told apart by (device, inode) of what they
//! lead to, so the main config is never read as its own drop-in and a
//! file two spellings match is read once (as the first spelling in sorted
//! order, which errors then name).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
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
    // The main file was read just now; if it cannot be stat'ed now, no
    // match is taken for it.
    let main_id = identity(main);
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    // Matches that lead nowhere (a dangling symlink) have no identity:
    // kept once per spelling, so reading it is the error naming it.
    let mut dangling: HashSet<PathBuf> = HashSet::new();
    let mut out: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        let mut found = match matches(&base, pattern) {
            Ok(found) => found,
            Err(reason) => {
                errors.push(error(main, format!("\"{pattern}\": {reason}")));
                continue;
            }
        };
        found.sort();
        for p in found {
            let new = match identity(&p) {
                Some(id) => Some(id) != main_id && seen.insert(id),
                None => dangling.insert(p.clone()),
            };
            if new {
                out.push(p);
            }
        }
    }
    out
}

/// The files (not directories) `pattern` names, from `base` if relative.
fn matches(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let (start, rest) = match pattern.strip_prefix('/') {
        Some(rest) => (PathBuf::from("/"), rest),
        None => (base.to_path_buf(), pattern),
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let mut found = vec![start];
    for part in parts {
        let mut next = Vec::new();
        if !part.contains(['*', '?', '[']) {
            // No wildcard: no directory to read, as glob does.
            next.extend(
                found
                    .iter()
                    .map(|dir| dir.join(part))
                    .filter(|p| p.symlink_metadata().is_ok()),
            );
        } else {
            // The checker validated the whole pattern, so every part is
            // valid; the error is for completeness.
            let wildcard = glob::Pattern::new(part).map_err(|e| e.msg.to_string())?;
            let dot_ok = part.starts_with('.');
            for dir in found.iter().filter(|d| d.is_dir()) {
                let entries = std::fs::read_dir(dir)
                    .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
                for entry in entries {
                    let name = entry
                        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
                        .file_name();
                    if name_matches(&wildcard, dot_ok, &name) {
                        next.push(dir.join(name));
                    }
                }
            }
        }
        found = next;
    }
    // A dangling symlink stays: reading it is the error that names it.
    found.retain(|p| !p.is_dir());
    Ok(found)
}

/// The (device, inode) of the file `path` leads to, symlinks followed.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Does the directory entry `name` match one part of a pattern? A name
/// starting with a dot only if the part does too (`dot_ok`): editors'
/// locks (`.#a.toml`) and hidden backups (`.old-a.toml`) sit beside the
/// drop-ins, and run-parts and systemd skip them. A byte that is not UTF-8
/// matches a wildcard only (it is U+FFFD to the matcher, which no pattern
/// in a config writes).
fn name_matches(part: &glob::Pattern, dot_ok: bool, name: &OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    if name.as_bytes().starts_with(b".") && !dot_ok {
        return false;
    }
    part.matches_with(&name.to_string_lossy(), glob::MatchOptions::new())
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
