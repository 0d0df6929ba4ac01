//! The unit-file syntax (systemd.syntax(7)): `[Section]` headers,
//! `Key=value` lines, comments, and a trailing backslash that continues a
//! line. What the keys mean is left to `keys.rs` and `mod.rs`.

use std::collections::HashMap;
use std::path::Path;

use super::ImportError;

/// One unit file: section → key → values in order (a key may repeat; an
/// empty assignment resets it, as systemd does).
pub type Unit = HashMap<String, HashMap<String, Vec<String>>>;

pub fn err(path: &Path, line: Option<usize>, message: impl Into<String>) -> ImportError {
    ImportError {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

pub fn parse_unit(path: &Path, text: &str) -> Result<Unit, Vec<ImportError>> {
    let mut unit: Unit = HashMap::new();
    let mut section: Option<String> = None;
    let mut errors = Vec::new();
    let mut pending = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if pending.is_empty() {
            start = i + 1;
        }
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        // A trailing backslash continues the line.
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            continue;
        }
        let Some(sec) = &section else {
            errors.push(err(path, Some(start), "a setting before any [Section]"));
            continue;
        };
        let Some((k, v)) = line.split_once('=') else {
            errors.push(err(path, Some(start), format!("`{line}` is not Key=value")));
            continue;
        };
        let values = unit
            .entry(sec.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default();
        let v = v.trim();
        if v.is_empty() {
            values.clear();
        } else {
            values.push(v.to_string());
        }
    }
    if errors.is_empty() {
        Ok(unit)
    } else {
        Err(errors)
    }
}
