//! The unit-file syntax (systemd.syntax(7)): `[Section]` headers,
//! `Key=value` lines, comments, and a trailing backslash that continues a
//! line. What the keys mean is left to `keys.rs` and `mod.rs`.

use std::path::Path;

use super::ImportError;

/// One section: its assignments in file order (a key may repeat).
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub entries: Vec<(String, String)>,
}

impl Section {
    /// The values of `key` since its last empty assignment (which resets
    /// a list in systemd).
    pub fn all(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.entries {
            if k == key {
                if v.is_empty() {
                    out.clear();
                } else {
                    out.push(v.clone());
                }
            }
        }
        out
    }

    /// The value that counts for a single-valued key: the last.
    pub fn last(&self, key: &str) -> Option<String> {
        self.all(key).pop()
    }

    /// Each key once, in the order of its first line.
    pub fn keys(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (k, _) in &self.entries {
            if !out.contains(&k.as_str()) {
                out.push(k);
            }
        }
        out
    }
}

/// One unit file: its sections in file order (a repeated header adds to
/// the section).
#[derive(Clone, Debug, Default)]
pub struct Unit {
    pub sections: Vec<(String, Section)>,
}

impl Unit {
    pub fn section(&self, name: &str) -> Section {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    fn push(&mut self, section: &str, key: String, value: String) {
        if !self.sections.iter().any(|(n, _)| n == section) {
            self.sections
                .push((section.to_string(), Section::default()));
        }
        if let Some((_, s)) = self.sections.iter_mut().find(|(n, _)| n == section) {
            s.entries.push((key, value));
        }
    }
}

pub fn err(path: &Path, line: Option<usize>, message: impl Into<String>) -> ImportError {
    ImportError {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// The logical lines of a unit file with the number of their first line,
/// as systemd's config parser joins them (a line ends at LF, CR LF, a
/// lone CR or NUL; a leading byte order mark is skipped): a line ending in an unescaped
/// backslash goes on with the next, the backslash becoming a space;
/// comment lines inside the continuation are skipped; an empty line ends
/// it.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text = text.replace("\r\n", "\n");
    let text = text.strip_suffix('\n').unwrap_or(&text);
    for (i, raw) in text.split(['\n', '\r', '\0']).enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let (start, mut line) = pending.take().unwrap_or((i + 1, String::new()));
        line.push_str(raw);
        let trailing = line.len() - line.trim_end_matches('\\').len();
        if trailing % 2 == 1 && !raw.is_empty() {
            line.pop();
            line.push(' ');
            pending = Some((start, line));
        } else {
            out.push((start, line));
        }
    }
    out.extend(pending);
    out
}

pub fn parse_unit(path: &Path, text: &str) -> Result<Unit, Vec<ImportError>> {
    let mut unit = Unit::default();
    let mut section: Option<String> = None;
    let mut errors = Vec::new();
    for (start, line) in logical_lines(text) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
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
        unit.push(sec, k.trim().to_string(), v.trim().to_string());
    }
    if errors.is_empty() {
        Ok(unit)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(text: &str) -> Section {
        parse_unit(Path::new("x.service"), text)
            .unwrap()
            .section("Service")
    }

    #[test]
    fn continuation_lines_are_joined_as_systemd_joins_them() {
        // oidentd's multi-line quoted `sh -c`: the backslash becomes a
        // space, the next line comes whole (its indentation too), a
        // comment line between is skipped.
        let s = service(
            "[Service]\nExecStart=-/bin/sh -c 'exec /usr/sbin/oidentd -i \\\n# a comment\n  $OIDENT_OPTIONS'\nUser=x\n",
        );
        assert_eq!(
            s.last("ExecStart").as_deref(),
            Some("-/bin/sh -c 'exec /usr/sbin/oidentd -i    $OIDENT_OPTIONS'")
        );
        assert_eq!(s.last("User").as_deref(), Some("x"));
        // An escaped backslash at the end does not continue the line.
        let s = service("[Service]\nA=x \\\\\nB=y\n");
        assert_eq!(s.last("A").as_deref(), Some("x \\\\"));
    }

    /// systemd ends a line at LF, CR LF, a lone CR or a NUL, and skips a
    /// UTF-8 byte order mark: a key after a lone CR is a key of its own
    /// (an `IPAddressDeny=any` there was lost inside another's value).
    #[test]
    fn line_ends_and_the_bom_are_systemds() {
        let u = parse_unit(
            Path::new("x.socket"),
            "\u{feff}[Socket]\r\nA=1\rIPAddressDeny=any\0B=2 \\\r\n  more\r\n",
        )
        .unwrap();
        let s = u.section("Socket");
        assert_eq!(s.last("A").as_deref(), Some("1"));
        assert_eq!(s.last("IPAddressDeny").as_deref(), Some("any"));
        assert_eq!(s.last("B").as_deref(), Some("2    more"));
    }

    #[test]
    fn an_empty_assignment_resets_the_list_and_order_is_kept() {
        let s = service("[Service]\nA=1\nB=2\nA=\nA=3\nA=4\n");
        assert_eq!(s.all("A"), ["3", "4"]);
        assert_eq!(s.keys(), ["A", "B"]);
    }
}
