//! Knowing a process group by its members, for `max_runtime`'s SIGKILL
//! after the leader was reaped.
//!
//! A group's id is its leader's pid, and the kernel does not give a pid
//! out again while any process has it as its pid, group or session id.
//! While the leader is unreaped its zombie holds the id. Once it is
//! reaped, the id is held by the group's remaining members alone: when
//! they are all gone the id is free, and a new process can get it, call
//! setsid() and lead a new, unrelated group of the same id. So the
//! members present at the reap are written down (pid and start time, so a
//! recycled pid is not taken for one of them), and the group is still the
//! one summond stopped exactly while one of them is alive in it.

use std::io::Read;

use nix::unistd::Pid;

use crate::upgrade::GroupMember;

/// Every process whose group is `pgid`, now. Called while the leader is
/// an unreaped zombie (which holds the id), so each is of the leader's
/// group and none of a later one's.
pub(super) fn members_of(pgid: Pid) -> Vec<GroupMember> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut buf = Vec::with_capacity(512);
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != pgid.as_raw())
        .filter_map(|pid| {
            let (pgrp, start) = stat(pid, &mut buf)?;
            (pgrp == pgid.as_raw()).then_some(GroupMember { pid, start })
        })
        .collect()
}

/// Is the group `pgid` still the one whose members were written down:
/// is one of them still there, the same process (same start) and still
/// in it? Then it holds the id and nothing else can have it.
pub(super) fn still_held(pgid: Pid, members: &[GroupMember]) -> bool {
    let mut buf = Vec::with_capacity(512);
    members
        .iter()
        .any(|m| stat(m.pid, &mut buf) == Some((pgid.as_raw(), m.start)))
}

/// (process group, start time in clock ticks after boot) of `pid`, from
/// /proc/PID/stat (fields 5 and 22).
fn stat(pid: i32, buf: &mut Vec<u8>) -> Option<(i32, u64)> {
    buf.clear();
    std::fs::File::open(format!("/proc/{pid}/stat"))
        .ok()?
        .read_to_end(buf)
        .ok()?;
    parse_stat(buf)
}

fn parse_stat(text: &[u8]) -> Option<(i32, u64)> {
    // The command name (field 2) is in parentheses and may hold anything,
    // spaces and ')' included: the fields after it start after the last ')'.
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // Field 3 (state) is the first here: field n is at n - 3.
    let pgrp = fields.nth(5 - 3)?.parse().ok()?;
    let start = fields.nth(22 - 5 - 1)?.parse().ok()?;
    Some((pgrp, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_name_with_spaces_and_parens() {
        let line = b"4321 (a) b (c)) S 1 4300 4300 0 -1 4194560 90 0 0 0 1 2 0 0 20 0 1 0 987654 2269184 219 18446744073709551615\n";
        assert_eq!(parse_stat(line), Some((4300, 987654)));
        assert_eq!(parse_stat(b"1 (x) S 0"), None);
    }

    #[test]
    fn our_own_group_lists_us_with_our_start() {
        let me = std::process::id() as i32;
        let pgrp = nix::unistd::getpgrp();
        let mut buf = Vec::new();
        let (g, start) = stat(me, &mut buf).unwrap();
        assert_eq!(g, pgrp.as_raw());
        let members = [GroupMember { pid: me, start }];
        assert!(still_held(pgrp, &members));
        // Another start time is another process that had our pid.
        assert!(!still_held(
            pgrp,
            &[GroupMember {
                pid: me,
                start: start + 1
            }]
        ));
        if pgrp.as_raw() != me {
            assert!(members_of(pgrp).contains(&GroupMember { pid: me, start }));
        }
    }
}
