//! Keeping summond's resident set to what serving needs. Loading a config
//! runs code (argument parsing, the TOML parser, the checker, the
//! diagnostics) and builds tables that serving never touches again; after
//! each load, summond gives back the freed heap (`malloc_trim`) and unmaps
//! the pages of its read-only file mappings that it touched only then.
//!
//! Only clean mappings are dropped: not writable, backed by a file, and
//! with no private (copy-on-write) page, which is what smaps reports as
//! `Anonymous: 0 kB`. Such a page is identical to the file's, so
//! `MADV_DONTNEED` just removes it from this process's page tables; the
//! page stays in the page cache, shared, and an access maps it again (a
//! minor fault). Code used while serving comes back within the first
//! connections and stays.

use nix::libc;

/// Give back what loading a config left resident.
pub fn shed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    if let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") {
        for (start, end) in clean_mappings(&smaps) {
            // SAFETY: a clean, read-only, file-backed private mapping: its
            // pages equal the file's, so dropping them loses nothing.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// The address ranges of the clean file mappings with pages resident.
fn clean_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut rss = 0u64;
    let mut anonymous = 0u64;
    let mut finish = |m: Option<(usize, usize)>, rss: u64, anonymous: u64| {
        if let Some(range) = m {
            if rss > 0 && anonymous == 0 {
                out.push(range);
            }
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            finish(current.take(), rss, anonymous);
            rss = 0;
            anonymous = 0;
            let perms = fields.next().unwrap_or("");
            let _offset = fields.next();
            let _dev = fields.next();
            let inode = fields.next().unwrap_or("0");
            let path = fields.next().unwrap_or("");
            let clean_kind = perms.len() == 4
                && !perms.contains('w')
                && perms.ends_with('p')
                && inode != "0"
                && path.starts_with('/');
            if let (true, Ok(s), Ok(e)) = (
                clean_kind,
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                current = Some((s, e));
            }
        } else if current.is_some() {
            let value = || {
                fields
                    .clone()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            match first {
                "Rss:" => rss = value(),
                // Any private copy makes the mapping off-limits. (A dirty
                // page here is the page cache's, e.g. of a binary just
                // written, not a copy: it stays in the cache.)
                "Anonymous:" => anonymous += value(),
                _ => {}
            }
        }
    }
    finish(current.take(), rss, anonymous);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0093000 r--p 00000000 fe:00 5341237                    /usr/sbin/summond
Rss:                 600 kB
Anonymous:             0 kB
55d0a0093000-55d0a02a5000 r-xp 00093000 fe:00 5341237                    /usr/sbin/summond
Rss:                1200 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0a02a5000-55d0a02b4000 r--p 002a4000 fe:00 5341237                    /usr/sbin/summond
Rss:                  60 kB
Anonymous:            60 kB
55d0a02b4000-55d0a02b5000 rw-p 002b2000 fe:00 5341237                    /usr/sbin/summond
Rss:                   4 kB
Anonymous:             4 kB
7f0000000000-7f0000001000 r--p 00000000 00:00 0                          [vvar]
Rss:                   4 kB
Anonymous:             0 kB
7f0000002000-7f0000003000 r-xp 00000000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_resident_read_only_file_mappings_are_dropped() {
        assert_eq!(
            clean_mappings(SMAPS),
            vec![
                (0x55d0a0000000, 0x55d0a0093000),
                (0x55d0a0093000, 0x55d0a02a5000)
            ],
            "relro (copied on write), data, vvar and non-resident mappings are kept"
        );
    }
}
