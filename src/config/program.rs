//! `exec`: the argv checked, and its program found when the config loads
//! (an absolute path that must be executable, or a name looked up in
//! summond's PATH; inside the jail of a chrooted service), or one of the
//! services summond serves itself (`internal:NAME`), so a typo is a config
//! error rather than a failure on the first connection.

use std::ffi::OsString;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml::de::DeValue;

use super::parse::{Checker, Value};
use super::{ErrorKind, Internal};

/// `exec = ["internal:echo"]` names a service summond serves itself.
const INTERNAL_PREFIX: &str = "internal:";

impl Checker<'_> {
    pub(super) fn exec(
        &mut self,
        v: &Value<'_>,
        jail: Option<&Path>,
    ) -> Option<(Vec<String>, PathBuf, Option<Internal>)> {
        let argv = match v.get_ref() {
            DeValue::Array(_) => self.string_list("exec", v)?,
            _ => {
                self.wrong_type("exec", v, "an array of strings like [\"/bin/cat\"]");
                return None;
            }
        };
        let Some((first, first_span)) = argv.first().cloned() else {
            self.at(
                v.span(),
                ErrorKind::Invalid {
                    key: "exec",
                    reason: "is empty: name the program to run".into(),
                },
            );
            return None;
        };
        if let Some((_, span)) = argv.iter().find(|(a, _)| a.contains('\0')) {
            self.at(
                span.clone(),
                ErrorKind::Invalid {
                    key: "exec",
                    reason: "arguments cannot contain a NUL byte".into(),
                },
            );
            return None;
        }
        let owned: Vec<String> = argv.iter().map(|(a, _)| a.to_string()).collect();
        if let Some(name) = first.strip_prefix(INTERNAL_PREFIX) {
            let internal = self.internal_service(name, &argv)?;
            return Some((owned, PathBuf::from(first), Some(internal)));
        }
        // Services running the same program look it up once.
        let key = (first.to_string(), jail.map(Path::to_path_buf));
        if let Some(program) = self.programs.get(&key) {
            return Some((owned, program.clone(), None));
        }
        match resolve_program(first, &self.host.path_var, jail) {
            Ok(program) => {
                self.programs.insert(key, program.clone());
                Some((owned, program, None))
            }
            Err(kind) => {
                self.at(first_span, kind);
                None
            }
        }
    }

    /// `exec = ["internal:NAME"]`: one of summond's own services, which
    /// takes no arguments.
    fn internal_service(&mut self, name: &str, argv: &[(&str, Range<usize>)]) -> Option<Internal> {
        let (first, first_span) = argv.first()?.clone();
        let Some((_, internal)) = Internal::ALL.iter().find(|(n, _)| *n == name) else {
            let names: Vec<String> = Internal::ALL
                .iter()
                .map(|(n, _)| format!("internal:{n}"))
                .collect();
            self.at(
                first_span,
                ErrorKind::Invalid {
                    key: "exec",
                    reason: format!(
                        "\"{first}\" is not an internal service (there are {})",
                        names.join(", ")
                    ),
                },
            );
            return None;
        };
        if let Some((_, span)) = argv.get(1) {
            self.at(
                span.clone(),
                ErrorKind::Invalid {
                    key: "exec",
                    reason: format!("\"{first}\" takes no arguments"),
                },
            );
            return None;
        }
        Some(*internal)
    }
}

fn check_executable(path: &Path) -> Result<(), &'static str> {
    let meta = std::fs::metadata(path).map_err(|_| "does not exist")?;
    if !meta.is_file() {
        return Err("is not a regular file");
    }
    if meta.permissions().mode() & 0o111 == 0
        || nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err()
    {
        return Err("is not executable");
    }
    Ok(())
}

/// `exec[0]`: an absolute path that must be executable, or a bare name
/// looked up in PATH now, so a typo is a config error rather than a
/// failure on the first connection.
///
/// With a `chroot` the child execs after chroot(2), so the program is
/// looked up inside the jail and named by its path there.
fn resolve_program(
    name: &str,
    path_var: &OsString,
    jail: Option<&Path>,
) -> Result<PathBuf, ErrorKind> {
    let on_disk = |p: &Path| match jail {
        Some(j) => j.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_path_buf(),
    };
    if name.contains('/') {
        if !name.starts_with('/') {
            return Err(ErrorKind::ProgramRelative { path: name.into() });
        }
        let path = PathBuf::from(name);
        return match check_executable(&on_disk(&path)) {
            Ok(()) => Ok(path),
            Err(why) => Err(ErrorKind::ProgramNotExecutable {
                path: on_disk(&path),
                why,
            }),
        };
    }
    if name.is_empty() {
        return Err(ErrorKind::ProgramNotFound { name: name.into() });
    }
    std::env::split_paths(path_var)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| check_executable(&on_disk(candidate)).is_ok())
        .ok_or_else(|| ErrorKind::ProgramNotFound { name: name.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_resolution() {
        let path: OsString = "/nonexistent:/usr/bin:/bin".into();
        assert!(resolve_program("sh", &path, None).unwrap().ends_with("sh"));
        assert!(matches!(
            resolve_program("no-such-program-xyz", &path, None),
            Err(ErrorKind::ProgramNotFound { .. })
        ));
        assert!(matches!(
            resolve_program("bin/sh", &path, None),
            Err(ErrorKind::ProgramRelative { .. })
        ));
        assert!(matches!(
            resolve_program("/etc/passwd", &path, None),
            Err(ErrorKind::ProgramNotExecutable {
                why: "is not executable",
                ..
            })
        ));
        assert!(matches!(
            resolve_program("/tmp", &path, None),
            Err(ErrorKind::ProgramNotExecutable {
                why: "is not a regular file",
                ..
            })
        ));
    }
}
