//! `Condition*=` and `Assert*=` in [Unit]: systemd does not start a unit
//! whose conditions fail (Debian's ssh.socket will not run while
//! /etc/ssh/sshd_not_to_be_run exists). summond checks none; the
//! importer checks the path conditions now, and writes a service whose
//! conditions fail here `disabled = true` rather than serve what the
//! unit would not.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::unit::Unit;
use super::{File, Import};

/// The path conditions the importer can check, by their name after
/// `Condition`/`Assert`.
fn holds(kind: &str, path: &Path) -> Option<bool> {
    let meta = std::fs::metadata(path).ok();
    Some(match kind {
        "PathExists" => meta.is_some(),
        "PathIsDirectory" => meta.is_some_and(|m| m.is_dir()),
        "PathIsSymbolicLink" => std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()),
        "FileNotEmpty" => meta.is_some_and(|m| m.is_file() && m.len() > 0),
        "FileIsExecutable" => {
            meta.is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        "DirectoryNotEmpty" => std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some()),
        _ => return None,
    })
}

/// Every condition of `unit`'s [Unit] named; the service disabled when
/// the ones checked fail (all plain ones must hold; of the `|` ones, one).
pub fn check(im: &mut Import, file: File, unit: &Unit) {
    let section = unit.section("Unit");
    let mut plain_ok = true;
    let (mut triggers, mut trigger_ok) = (0, false);
    for (key, value) in &section.entries {
        let Some(kind) = key
            .strip_prefix("Condition")
            .or_else(|| key.strip_prefix("Assert"))
        else {
            continue;
        };
        let trigger = value.starts_with('|');
        let v = value.trim_start_matches('|');
        let negate = v.starts_with('!');
        let path = v.trim_start_matches('!');
        let result = if path.starts_with('/') {
            holds(kind, Path::new(path)).map(|h| h != negate)
        } else {
            None
        };
        let text = match result {
            None => format!(
                "{key}={value}: summond checks no condition: the service is started whatever \
                 it says (check it by hand)"
            ),
            Some(true) => {
                format!("{key}={value}: summond checks no condition; this one held at import")
            }
            Some(false) => format!(
                "{key}={value}: summond checks no condition; this one failed at import, \
                 so the service is written disabled"
            ),
        };
        let ok = result.unwrap_or(true);
        if trigger {
            triggers += 1;
            trigger_ok |= ok;
        } else {
            plain_ok &= ok;
        }
        im.drop_key(file, "Unit", key, text);
    }
    if !plain_ok || (triggers > 0 && !trigger_ok) {
        im.e.set("disabled", "true".into());
    }
}
