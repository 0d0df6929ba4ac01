//! `runtime_directory` and `runtime_directory_mode` (systemd's
//! RuntimeDirectory= and RuntimeDirectoryMode=): names checked here, when
//! the config loads, so what summond later makes as root under /run is
//! never more than plain relative names.

use super::draft::Draft;
use super::parse::{Checker, Table, Value};
use super::{units, ErrorKind};
use toml::de::DeValue;

fn invalid(key: &'static str, reason: impl Into<String>) -> ErrorKind {
    ErrorKind::Invalid {
        key,
        reason: reason.into(),
    }
}

/// What is wrong with `name` as a runtime directory, if anything.
fn name_problem(name: &str) -> Option<String> {
    if name.starts_with('/') {
        return Some(format!(
            "\"{name}\" must be relative (it is made under /run, or $XDG_RUNTIME_DIR)"
        ));
    }
    for segment in name.split('/') {
        let why = match segment {
            "" => "has an empty segment",
            "." | ".." => "has a \".\" or \"..\" segment",
            s if !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) =>
            {
                "may use only letters, digits, '_', '.', '-' and '/' between names"
            }
            _ => continue,
        };
        return Some(format!("\"{name}\" {why}"));
    }
    None
}

/// `runtime_directory`: the names, and where they are made.
pub(super) fn names(cx: &mut Checker<'_>, key: &'static str, v: &Value<'_>, d: &mut Draft<'_>) {
    let Some(names) = cx.runtime_names(v) else {
        return;
    };
    let Some(base) = cx.host.runtime_base.clone() else {
        let why = "summond is not root and XDG_RUNTIME_DIR is not set to an absolute \
                   path, so there is no directory to make it in";
        cx.at(v.span(), invalid(key, why));
        return;
    };
    d.runtime_directory = Some((names, base));
}

/// `runtime_directory_mode`; the draft's is None after an error.
pub(super) fn mode(cx: &mut Checker<'_>, key: &'static str, v: &Value<'_>, d: &mut Draft<'_>) {
    d.runtime_directory_mode = cx.parsed(key, v, |s| {
        units::octal(s, 0o7777).ok_or(format!("\"{s}\" is not an octal file mode like \"0755\""))
    });
}

impl Checker<'_> {
    /// `runtime_directory_mode` alone is an error (told after any in its
    /// value).
    pub(super) fn check_runtime_directory_mode(&mut self, t: &Table<'_, '_>) {
        if let (None, Some(m)) = (
            t.field("runtime_directory"),
            t.field("runtime_directory_mode"),
        ) {
            let why = "has no use without runtime_directory";
            self.at(m.span(), invalid("runtime_directory_mode", why));
        }
    }

    /// A string or an array of strings, each a valid name.
    fn runtime_names(&mut self, v: &Value<'_>) -> Option<Vec<String>> {
        let items = match v.get_ref() {
            DeValue::String(s) => vec![(s.as_ref(), v.span())],
            DeValue::Array(_) => self.string_list("runtime_directory", v)?,
            _ => {
                self.wrong_type("runtime_directory", v, "a string or an array of strings");
                return None;
            }
        };
        if items.is_empty() {
            self.at(
                v.span(),
                invalid("runtime_directory", "needs at least one name"),
            );
            return None;
        }
        let mut names = Vec::with_capacity(items.len());
        let mut failed = false;
        for (name, span) in items {
            match name_problem(name) {
                Some(why) => {
                    self.at(span, invalid("runtime_directory", why));
                    failed = true;
                }
                None => names.push(name.to_string()),
            }
        }
        (!failed).then_some(names)
    }
}

#[cfg(test)]
mod tests {
    use super::name_problem;

    #[test]
    fn runtime_directory_names_are_plain_relative_paths() {
        for ok in ["sshd", "a/b", "x.y-z_1", "..a", "a..b"] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in [
            "", "/run/x", "a//b", "a/", "./a", "a/..", "..", ".", "a b", "a\\b", "é", "a\0b",
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
