//! What else systemd reads for a unit: drop-in `.conf` files
//! (`NAME.d/`, the template's `name@.TYPE.d/`, the prefixes' `a-.TYPE.d/`,
//! the type's `TYPE.d/`) and a unit of the same name in a directory that
//! comes first (an override, or a mask: a link to /dev/null). The
//! importer reads none of them, so a unit they change is refused rather
//! than imported as something systemd does not run.

use std::path::{Path, PathBuf};

/// The directories systemd loads system units from, first the ones that
/// win (systemd.unit(5), "System Unit Search Path").
pub const SYSTEM_UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/run/systemd/generator.early",
    "/etc/systemd/system",
    "/etc/systemd/system.attached",
    "/run/systemd/system",
    "/run/systemd/system.attached",
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
    "/run/systemd/generator.late",
];

/// The drop-in directory names of `unit` (`foo-bar@x.service`:
/// `foo-bar@x.service.d`, `foo-bar@.service.d`, `foo-.service.d`,
/// `service.d`).
fn dropin_dirs(unit: &str) -> Vec<String> {
    let Some((stem, kind)) = unit.rsplit_once('.') else {
        return vec![format!("{unit}.d")];
    };
    let mut out = vec![format!("{unit}.d")];
    let prefix = match stem.split_once('@') {
        Some((p, i)) => {
            if !i.is_empty() {
                out.push(format!("{p}@.{kind}.d"));
            }
            p
        }
        None => stem,
    };
    for (at, _) in prefix.match_indices('-') {
        out.push(format!("{}-.{kind}.d", &prefix[..at]));
    }
    out.push(format!("{kind}.d"));
    out
}

/// What changes the unit `dir/unit` without the importer reading it:
/// drop-ins beside it and, when `dir` is one of `search` (the unit is
/// installed there), in every directory of `search`; and the same name
/// in a directory of `search` that wins over `dir`.
pub fn changes(dir: &Path, unit: &str, search: &[PathBuf]) -> Vec<String> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let here = canon(dir);
    let installed = here.is_some() && search.iter().any(|d| canon(d) == here);
    let mut dirs: Vec<PathBuf> = vec![dir.to_path_buf()];
    if installed {
        dirs.extend(search.iter().cloned());
    }
    let mut out = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for d in &dirs {
        for name in dropin_dirs(unit) {
            let Some(real) = canon(&d.join(&name)) else {
                continue;
            };
            if seen.contains(&real) {
                continue;
            }
            seen.push(real);
            let Ok(entries) = std::fs::read_dir(d.join(&name)) else {
                continue;
            };
            let mut confs: Vec<String> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                .map(|p| p.display().to_string())
                .collect();
            confs.sort();
            out.extend(confs.into_iter().map(|c| format!("the drop-in {c}")));
        }
    }
    if installed {
        let ours = canon(&dir.join(unit));
        for d in search {
            if canon(d) == here {
                break;
            }
            let other = d.join(unit);
            if std::fs::symlink_metadata(&other).is_err() {
                continue;
            }
            if std::fs::read_link(&other).is_ok_and(|t| t == Path::new("/dev/null")) {
                out.push(format!(
                    "{} (a link to /dev/null: masked, systemd never starts it)",
                    other.display()
                ));
            } else if canon(&other) != ours {
                out.push(format!("{}, which systemd loads instead", other.display()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropin_directories_are_systemds() {
        assert_eq!(
            dropin_dirs("foo-bar@x.service"),
            [
                "foo-bar@x.service.d",
                "foo-bar@.service.d",
                "foo-.service.d",
                "service.d"
            ]
        );
        assert_eq!(dropin_dirs("ssh.socket"), ["ssh.socket.d", "socket.d"]);
    }

    #[test]
    fn dropins_overrides_and_masks_are_found() {
        let root = std::env::temp_dir().join(format!("summond-dropins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (etc, lib) = (root.join("etc"), root.join("lib"));
        std::fs::create_dir_all(etc.join("t.socket.d")).unwrap();
        std::fs::create_dir_all(lib.join("socket.d")).unwrap();
        std::fs::write(lib.join("t.socket"), "[Socket]\n").unwrap();
        std::fs::write(lib.join("u.socket"), "[Socket]\n").unwrap();
        std::fs::write(lib.join("v.socket"), "[Socket]\n").unwrap();
        std::fs::write(etc.join("t.socket.d/local.conf"), "[Socket]\n").unwrap();
        std::fs::write(etc.join("t.socket.d/notes.txt"), "").unwrap();
        std::os::unix::fs::symlink("/dev/null", etc.join("u.socket")).unwrap();
        std::os::unix::fs::symlink(lib.join("v.socket"), etc.join("v.socket")).unwrap();
        let search = [etc.clone(), lib.clone()];
        let got = changes(&lib, "t.socket", &search);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].ends_with("etc/t.socket.d/local.conf"), "{got:?}");
        let got = changes(&lib, "u.socket", &search);
        assert!(got.len() == 1 && got[0].contains("masked"), "{got:?}");
        assert_eq!(
            changes(&lib, "v.socket", &search),
            Vec::<String>::new(),
            "a link to itself"
        );
        std::fs::write(lib.join("socket.d/all.conf"), "").unwrap();
        assert_eq!(changes(&lib, "v.socket", &search).len(), 1);
        // Not installed in the search path: only the directory beside it.
        assert_eq!(changes(&root, "t.socket", &search), Vec::<String>::new());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
