//! `EnvironmentFile=` read at import: only a file every user may read,
//! reached without symbolic links (root runs the import, and its output
//! is a config anyone may be shown: a secret only root may read must not
//! end up in it), parsed as systemd parses it (env-file.c).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use super::exec::is_env_name;
use crate::safe_dir::WalkError;

/// A file's variables, or why it was not read.
#[derive(Debug, PartialEq)]
pub enum EnvFile {
    Read(Vec<(String, String)>),
    /// Not there (an optional file's normal case).
    Missing,
    /// There, but the importer may not copy it (or could not read it).
    NotRead(String),
}

/// The most an environment file may hold (systemd's LONG_LINE_MAX is
/// 1 MiB a line; a whole file of settings is far less).
const MAX_ENV_FILE: u64 = 1 << 20;

pub fn read(path: &str) -> EnvFile {
    let path = Path::new(path);
    if !path.is_absolute() {
        return EnvFile::NotRead("not an absolute path".into());
    }
    if path.to_string_lossy().contains(['*', '?', '[']) {
        return EnvFile::NotRead(
            "a wildcard, which systemd expands and the importer does not: name the files".into(),
        );
    }
    match open_world_readable(path) {
        Ok(fd) => {
            let mut text = String::new();
            let file = std::fs::File::from(fd);
            match std::io::Read::read_to_string(
                &mut std::io::Read::take(file, MAX_ENV_FILE + 1),
                &mut text,
            ) {
                Ok(n) if n as u64 > MAX_ENV_FILE => EnvFile::NotRead(format!(
                    "larger than {MAX_ENV_FILE} bytes, which the importer does not read"
                )),
                Ok(_) => EnvFile::Read(parse(&text)),
                Err(e) => EnvFile::NotRead(format!("cannot read it: {e}")),
            }
        }
        Err(Refusal::Missing) => EnvFile::Missing,
        Err(Refusal::Why(why)) => EnvFile::NotRead(why),
    }
}

enum Refusal {
    Missing,
    Why(String),
}

/// Open `path` with no symbolic link followed on the way or at the end
/// (each step opened relative to the directory before it, with
/// O_NOFOLLOW, so nothing can be swapped in between the check and the
/// read); every directory must be searchable and the file readable by
/// others.
fn open_world_readable(path: &Path) -> Result<OwnedFd, Refusal> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Refusal::Why("names no file".into()));
    };
    let dir = crate::safe_dir::walk(
        parent,
        None,
        |dir, shown| check_mode(dir, shown, true),
        |e| match e {
            WalkError::Io(_, e) if e.kind() == std::io::ErrorKind::NotFound => Refusal::Missing,
            e => Refusal::Why(e.to_string()),
        },
    )?;
    let name = CString::new(name.as_bytes())
        .map_err(|_| Refusal::Why("the path holds a NUL byte".into()))?;
    // O_PATH: nothing is opened for reading until fstat has shown a
    // regular file (opening a FIFO, or a device such as a watchdog, acts).
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(&dir, name.as_c_str(), flags, Mode::empty()).map_err(|e| match e {
        nix::Error::ENOENT => Refusal::Missing,
        e => Refusal::Why(format!("cannot open {}: {e}", path.display())),
    })?;
    check_mode(&fd, path, false)?;
    // The same file, for reading, through the handle.
    let handle = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = nix::fcntl::open(
        handle.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Refusal::Why(format!("cannot open {}: {e}", path.display())))?;
    check_mode(&file, path, false)?;
    Ok(file)
}

/// A directory others may search, or a regular file others may read.
fn check_mode(fd: &OwnedFd, shown: &Path, is_dir: bool) -> Result<(), Refusal> {
    let st =
        fstat(fd).map_err(|e| Refusal::Why(format!("cannot stat {}: {e}", shown.display())))?;
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let mode = st.st_mode & 0o7777;
    if is_dir {
        if mode & 0o001 == 0 {
            return Err(Refusal::Why(format!(
                "the directory {} is not searchable by every user (mode {mode:04o})",
                shown.display()
            )));
        }
    } else if kind == SFlag::S_IFLNK {
        return Err(Refusal::Why(format!(
            "{} is a symbolic link",
            shown.display()
        )));
    } else if kind != SFlag::S_IFREG {
        return Err(Refusal::Why(format!(
            "{} is not a regular file",
            shown.display()
        )));
    } else if mode & 0o004 == 0 {
        return Err(Refusal::Why(format!(
            "{} is not readable by every user (mode {mode:04o})",
            shown.display()
        )));
    }
    Ok(())
}

/// `KEY=value` lines as systemd reads them: `#` and `;` comments, values
/// in '...' or "..." (where `\` escapes `"`, `\`, `` ` `` and `$`), a
/// backslash escaping the next character outside quotes and joining
/// lines at a line's end, whitespace around an unquoted value dropped.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, value) in assignments(text) {
        let key = key.trim_end().to_string();
        if is_env_name(&key) {
            out.retain(|(k, _)| *k != key);
            out.push((key, value));
        }
    }
    out
}

fn assignments(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    'lines: while chars.peek().is_some() {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        match chars.peek() {
            Some('#' | ';') => {
                skip_comment(&mut chars);
                continue;
            }
            None => break,
            _ => {}
        }
        loop {
            match chars.next() {
                None | Some('\n') => continue 'lines,
                Some('=') => break,
                Some(c) => key.push(c),
            }
        }
        out.push((key, value(&mut chars)));
    }
    out
}

fn skip_comment(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\n' => return,
            _ => {}
        }
    }
}

/// One value, up to its line's end (which a quote or a backslash may
/// carry past).
fn value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut v = String::new();
    // Unquoted text's trailing whitespace is dropped; `keep` marks how
    // much of `v` is quoted or escaped and so kept.
    let mut keep = 0;
    while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
    while let Some(c) = chars.next() {
        match c {
            '\n' => break,
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    v.push(c);
                }
                keep = v.len();
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\' | '`' | '$')) => v.push(e),
                            Some('\n') | None => {}
                            Some(e) => {
                                v.push('\\');
                                v.push(e);
                            }
                        },
                        c => v.push(c),
                    }
                }
                keep = v.len();
            }
            '\\' => {
                match chars.next() {
                    Some('\n') | None => {}
                    Some(e) => v.push(e),
                }
                keep = v.len();
            }
            c => v.push(c),
        }
    }
    let trimmed = v.trim_end_matches([' ', '\t']).len().max(keep);
    v.truncate(trimmed);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_files_are_parsed_as_systemd_does() {
        let text = "# Options to pass to sshd\nSSHD_OPTS=\n; x\n  A = 1  \nB=\"two  words\" \nC='x \"y\"'\nD=a\\\nb\nE=\"q\\\"\\n\"\nnot an assignment\nA=3\n1X=no\n";
        assert_eq!(
            parse(text),
            [
                ("SSHD_OPTS".to_string(), String::new()),
                ("B".into(), "two  words".into()),
                ("C".into(), "x \"y\"".into()),
                ("D".into(), "ab".into()),
                ("E".into(), "q\"\\n".into()),
                ("A".into(), "3".into()),
            ]
        );
    }

    #[test]
    fn only_files_every_user_may_read_are_read() {
        assert_eq!(
            read("relative"),
            EnvFile::NotRead("not an absolute path".into())
        );
        assert_eq!(read("/nonexistent-summond-test/x"), EnvFile::Missing);
        assert!(matches!(read("/etc/passwd"), EnvFile::Read(_)));
        assert!(matches!(read("/etc"), EnvFile::NotRead(_)));
    }

    /// A wildcard (systemd reads every match) is not taken as a missing
    /// file; a file too large is not read cut short.
    #[test]
    fn wildcards_and_large_files_are_not_read() {
        let dir = std::env::temp_dir().join(format!("summond-envglob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::write(dir.join("a.env"), "OPTS=-x\n").unwrap();
        let got = read(&format!("{}/*.env", dir.display()));
        assert!(
            matches!(&got, EnvFile::NotRead(w) if w.contains("wildcard")),
            "{got:?}"
        );
        let big = "A=1\n".repeat((MAX_ENV_FILE / 4) as usize) + "OPTS=-x\n";
        std::fs::write(dir.join("big.env"), big).unwrap();
        let got = read(dir.join("big.env").to_str().unwrap());
        assert!(
            matches!(&got, EnvFile::NotRead(w) if w.contains("larger")),
            "{got:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO is refused without being opened for reading: a writer
    /// waiting in open(2) is not released (nor is a device's open run).
    #[test]
    fn a_fifo_is_not_opened() {
        let dir = std::env::temp_dir().join(format!("summond-envfifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let fifo = dir.join("opts");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        // A writer waits in open(2) until someone opens it for reading.
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (fifo, released) = (fifo.clone(), released.clone());
            std::thread::spawn(move || {
                let _w = std::fs::OpenOptions::new().write(true).open(&fifo);
                released.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let got = read(fifo.to_str().unwrap());
        assert!(
            matches!(&got, EnvFile::NotRead(w) if w.contains("not a regular file")),
            "{got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !released.load(std::sync::atomic::Ordering::SeqCst),
            "the import opened the FIFO"
        );
        // Release the writer.
        let _r = nix::fcntl::open(&fifo, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty());
        writer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
