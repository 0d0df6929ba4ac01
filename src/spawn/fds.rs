//! The fd plans: which of summond's fds becomes which fd in the child, for
//! each of the four ways a service is started (SPEC "The four ways").
//! Pure: `FdMove`s built before the spawn, carried out by the child
//! (`child.rs`).

use std::os::fd::RawFd;

use crate::config::{Pass, StderrMode};

/// The first fd `LISTEN_FDS` hands over (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// One fd the child gets: `from` in summond becomes `to` in the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdMove {
    pub from: RawFd,
    pub to: RawFd,
}

/// The fds a child gets (SPEC "The four ways"). `payload` is the
/// connection (accept mode) or the service's sockets in `listen` order
/// (pass mode); `stdio` takes only the first.
///
/// stdio: payload → 0 and 1, and 2 with `stderr = "socket"`.
/// listen_fds: /dev/null → 0, payload → 3, 4, …; 1 and 2 follow `stderr`
/// (inherit: summond's fd 2; null: /dev/null). Config validation rules
/// out `stderr = "socket"` with listen_fds.
pub fn plan_fds(pass: Pass, stderr: StderrMode, payload: &[RawFd], devnull: RawFd) -> Vec<FdMove> {
    let mut moves = Vec::with_capacity(payload.len() + 3);
    plan_fds_into(&mut moves, pass, stderr, payload, devnull);
    moves
}

/// `plan_fds` into a buffer the caller reuses.
pub fn plan_fds_into(
    moves: &mut Vec<FdMove>,
    pass: Pass,
    stderr: StderrMode,
    payload: &[RawFd],
    devnull: RawFd,
) {
    let mv = |from, to| FdMove { from, to };
    moves.clear();
    match pass {
        Pass::Stdio => {
            let s = payload[0];
            moves.push(mv(s, 0));
            moves.push(mv(s, 1));
            match stderr {
                StderrMode::Socket => moves.push(mv(s, 2)),
                StderrMode::Null => moves.push(mv(devnull, 2)),
                StderrMode::Inherit => {}
            }
        }
        Pass::ListenFds => {
            moves.push(mv(devnull, 0));
            match stderr {
                StderrMode::Null => {
                    moves.push(mv(devnull, 1));
                    moves.push(mv(devnull, 2));
                }
                StderrMode::Inherit | StderrMode::Socket => moves.push(mv(2, 1)),
            }
            for (i, fd) in payload.iter().enumerate() {
                moves.push(mv(*fd, LISTEN_FDS_START + i as RawFd));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_plans_of_the_four_modes() {
        let mv = |from, to| FdMove { from, to };
        assert_eq!(
            plan_fds(Pass::Stdio, StderrMode::Inherit, &[9], 5),
            vec![mv(9, 0), mv(9, 1)]
        );
        assert_eq!(
            plan_fds(Pass::Stdio, StderrMode::Socket, &[9], 5),
            vec![mv(9, 0), mv(9, 1), mv(9, 2)]
        );
        assert_eq!(
            plan_fds(Pass::Stdio, StderrMode::Null, &[9], 5),
            vec![mv(9, 0), mv(9, 1), mv(5, 2)]
        );
        assert_eq!(
            plan_fds(Pass::ListenFds, StderrMode::Inherit, &[9, 7], 5),
            vec![mv(5, 0), mv(2, 1), mv(9, 3), mv(7, 4)]
        );
        assert_eq!(
            plan_fds(Pass::ListenFds, StderrMode::Null, &[9], 5),
            vec![mv(5, 0), mv(5, 1), mv(5, 2), mv(9, 3)]
        );
    }
}
