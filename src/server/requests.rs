//! What a control client asks besides the status (`control::Request`):
//! `summond reload`, answered when the load it asked for is applied or
//! fails, and `summond pause|resume|restart NAME`, answered at once.
//!
//! A reload asked while none runs starts one, and its client is told that
//! load's outcome. One asked while a load runs (a SIGHUP's, or another
//! client's) is told the outcome of the load after it, which reads the
//! files as they are after the request (the running one may have read
//! them before an edit the asker just made); every client asking
//! meanwhile shares that next load. A waiting client that goes is closed
//! when it goes (`Endpoints::on_control_ready`), and its token then
//! answers nothing. A load given up (stop, upgrade) tells its clients so.

use log::{info, warn};
use mio::Token;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Instant;

use super::services::Changes;
use super::timers::{Timer, KILL_AFTER};
use super::Server;
use crate::control::{Answer, Request};

impl Server {
    /// A control client's whole request.
    pub(super) fn handle_request(&mut self, token: Token, request: Request) {
        let answer = match request {
            Request::Status => {
                let status = self.status().to_json_line();
                return self.answer(token, status);
            }
            Request::Reload => return self.request_reload(token),
            Request::Pause(name) => self.pause_service(&name, true),
            Request::Resume(name) => self.pause_service(&name, false),
            Request::Restart(name) => self.restart_service(&name),
        };
        self.answer(token, answer.to_json_line());
    }

    fn answer(&mut self, token: Token, bytes: Vec<u8>) {
        let (endpoints, mut lp) = self.endpoints();
        endpoints.answer_control(&mut lp, token, bytes);
    }

    /// `summond reload`: start a load, or wait for the one after the
    /// load running now.
    fn request_reload(&mut self, token: Token) {
        if !self.config.reloadable {
            let why = "summond wrap has no config file to reload".to_string();
            return self.answer(token, Answer::Failed(why).to_json_line());
        }
        if !self.endpoints.may_wait() {
            let why = "too many summond reload clients are waiting already".to_string();
            return self.answer(token, Answer::Failed(why).to_json_line());
        }
        if let Some(load) = &self.reloads.load {
            info!(event = "reload";
                "summond reload asked while the config is loading (pid {}); loading again after it",
                load.pid
            );
            self.reloads.waiting_next.push(token);
            self.reloads.again = true;
            return;
        }
        self.reloads.waiting.push(token);
        self.reload("summond reload asked");
    }

    /// Tell the clients of the load that ended how it ended.
    pub(super) fn answer_reloads(&mut self, answer: &Answer) {
        let bytes = answer.to_json_line();
        for token in std::mem::take(&mut self.reloads.waiting) {
            self.answer(token, bytes.clone());
        }
    }

    /// A load given up (stop, upgrade): its clients and those waiting for
    /// the next are told.
    pub(super) fn give_up_reloads(&mut self, why: &str) {
        let gone = std::mem::take(&mut self.reloads.waiting_next);
        self.reloads.waiting.extend(gone);
        self.answer_reloads(&Answer::Failed(format!("the reload was given up: {why}")));
    }

    /// `summond pause NAME` (`pause`) or `summond resume NAME`.
    fn pause_service(&mut self, name: &str, pause: bool) -> Answer {
        let Some(idx) = self.services.by_name().get(name).copied() else {
            return unknown(name);
        };
        let was = std::mem::replace(&mut self.services[idx].paused, pause);
        let now = Instant::now();
        self.sync_service(idx, now);
        let paused_now;
        let what = match (was, pause) {
            (true, true) => "was paused already",
            (false, true) => {
                paused_now = self.paused_text(idx);
                &paused_now
            }
            (false, false) => "was not paused",
            (true, false) => "resumed",
        };
        if was != pause {
            info!(event = "pause", service = name; "{name}: {what}");
            // Clients kept for it (a back-off, a hold) are tried again.
            self.retry_pending(now);
        }
        Answer::Done(format!("{name}: {what}"))
    }

    /// What a pause of service `idx` does: clients wait in the backlog,
    /// unless long-running children hold its sockets and accept by
    /// themselves (a pause only keeps new ones from starting).
    fn paused_text(&self, idx: usize) -> String {
        let id = self.services[idx].id;
        let holding = self
            .children
            .iter()
            .filter(|(_, c)| c.service == id && c.is_pass_mode())
            .count();
        match holding {
            0 => "paused: clients wait in its sockets' backlog until summond resume".into(),
            n => format!(
                "paused: its {n} long-running {} on accepting from its sockets; \
                 none is started until summond resume",
                if n == 1 { "child goes" } else { "children go" }
            ),
        }
    }

    /// `summond restart NAME`: SIGTERM its long-running (`accept =
    /// false`) children, and SIGKILL to the group of one still running
    /// `KILL_AFTER` later (as `max_runtime`, but nothing is held: one
    /// that ends at the SIGTERM is reaped at once, its sockets free for
    /// the next); the next client starts them again. Their ends count
    /// toward no restart guard.
    fn restart_service(&mut self, name: &str) -> Answer {
        let Some(idx) = self.services.by_name().get(name).copied() else {
            return unknown(name);
        };
        let id = self.services[idx].id;
        let pids: Vec<Pid> = self
            .children
            .iter()
            .filter(|(_, c)| c.service == id && c.is_pass_mode())
            .map(|(pid, _)| *pid)
            .collect();
        let mut stopped = 0;
        for pid in &pids {
            match kill(*pid, Signal::SIGTERM) {
                Ok(()) => {
                    self.children.mark_restarting(pid);
                    if let Some(c) = self.children.get(pid) {
                        let (pid, started_at) = (*pid, c.started_at);
                        let at = Instant::now() + KILL_AFTER;
                        self.timers.add(at, Timer::RestartKill { pid, started_at });
                    }
                    stopped += 1;
                }
                Err(e) => warn!("{name}: cannot SIGTERM pid {pid}: {e}"),
            }
        }
        let children = if stopped == 1 { "child" } else { "children" };
        info!(event = "restart", service = name;
            "{name}: summond restart: SIGTERM to {stopped} long-running {children}");
        Answer::Done(match stopped {
            0 => format!("{name}: no long-running child to restart; the next client starts one"),
            1 => format!(
                "{name}: SIGTERM sent to 1 long-running child (SIGKILL in {}s if still running); the next client starts it again",
                KILL_AFTER.as_secs()
            ),
            n => format!(
                "{name}: SIGTERM sent to {n} long-running children (SIGKILL in {}s to one still running); the next client starts them again",
                KILL_AFTER.as_secs()
            ),
        })
    }

    /// `KILL_AFTER` past a restart's SIGTERM: the child still running
    /// (the same one: a pid reused by a later child has another start)
    /// gets SIGKILL, its group with it.
    pub(super) fn restart_overdue(&mut self, pid: Pid, started_at: Instant) {
        let Some(child) = self.children.get(&pid) else {
            return;
        };
        if child.started_at != started_at || crate::signals::has_exited(pid) {
            return;
        }
        warn!(event = "restart", service = &*child.name, pid = pid.as_raw();
            "{}: pid {pid} is still running {}s after summond restart's SIGTERM; SIGKILL to its process group",
            child.name,
            KILL_AFTER.as_secs()
        );
        if let Err(e) = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL) {
            warn!("{}: cannot SIGKILL process group {pid}: {e}", child.name);
        }
    }
}

fn unknown(name: &str) -> Answer {
    let shown: String = name.chars().take(64).collect();
    Answer::Unknown(format!("no service is named {:?}", shown))
}

/// `summond reload`'s answer for a config of `services` applied.
pub(super) fn reloaded(services: usize, c: Changes) -> Answer {
    Answer::Reloaded {
        services: services as u64,
        added: c.added,
        removed: c.removed,
        changed: c.changed,
    }
}
