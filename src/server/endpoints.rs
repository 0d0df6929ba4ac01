//! summond's own endpoints in the event loop: the control socket and its
//! clients (the line protocol is `control.rs`), the `[daemon] metrics`
//! listener and its scrapers (the HTTP exchange is `metrics.rs`; the
//! pages `metrics.rs` and `status_page.rs`). Each
//! client has a timeout in the timer map, cancelled when it closes first;
//! a slow or silent one costs its buffers until then and delays nobody
//! else. `Endpoints` owns the listeners and the clients and never sees
//! the server: it is given what it needs of the loop (`Loop`: the
//! registry, the tokens, the timers, the resource back-off) and, for an
//! answer, a snapshot (`Status`, the metrics page) the server takes.

use rustc_hash::FxHashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use socket2::Socket;

use crate::addr::ListenAddr;
use crate::control::{self as ctl, Answer, Reply, MAX_REQUEST, REQUEST_GRACE};
use crate::limits::Backoff;
use crate::listener::{ListenOptions, Listener};
use crate::metrics::{self as prom, Request, Scrape, ScrapeState};
use crate::upgrade::ListenerState;

use super::connection::{is_resource_error, note_resource_fault};
use super::poller::{TokenKind, Tokens, CONTROL, METRICS};
use super::sockets::listener_state;
use super::timers::{Timer, TimerKey, Timers};

/// SPEC: the control socket is for root (or summond's user) only.
const CONTROL_SOCKET_MODE: u32 = 0o600;
/// Control clients answered at once; more wait in the backlog. Each
/// costs an fd until its answer is read.
const MAX_CONTROL_CLIENTS: usize = 16;
/// `summond reload` clients waiting for a load's outcome, counted apart
/// from the above: however many wait (a load can take up to 300 s), root
/// still gets its status, pause and resume answered.
const MAX_WAITING_CLIENTS: usize = 64;
/// A control client that has not read its answer by then is closed.
const CONTROL_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapers accepted per wake-up before the loop turns to other sources.
const SCRAPE_ACCEPT_BUDGET: usize = 16;
/// Scrapes open at once, so idle scrapers cannot take the fds services
/// need (each is closed at `SCRAPE_TIMEOUT` anyway); at the cap a new one
/// replaces the slowest (`metrics::Evictable`). Prometheus sends one
/// scrape at a time.
const MAX_SCRAPES: usize = 32;

/// What the endpoints are lent of the loop for one event.
pub(super) struct Loop<'a> {
    pub registry: &'a Registry,
    pub tokens: &'a mut Tokens,
    pub timers: &'a mut Timers,
    pub resources: &'a mut Backoff,
}

/// What one accept on the control socket gave.
pub(super) enum Accepted {
    /// A trusted client, watched for its request (`on_control_ready`).
    Client,
    /// None this time, but try again: a client of another uid (told so
    /// and closed), one that could not be looked at, an interrupted call.
    Skipped,
    /// Nothing more to accept now (none queued, at the cap, stalled, an
    /// error).
    Stop,
}

/// An episode of control clients refused: logged once per uid (up to
/// `REFUSED_UIDS` of them), the rest counted and said at its end.
struct Refusals {
    since: Instant,
    count: u64,
    uids: Vec<u32>,
}

/// An episode of refusals ends at a trusted client or this long after it
/// began (at the next refusal): each uid is logged once per interval.
const REFUSAL_EPISODE: Duration = Duration::from_secs(60);
/// The uids one episode logs; later ones are only counted.
const REFUSED_UIDS: usize = 8;

impl Refusals {
    /// Its end: how many refused clients went unlogged.
    fn end(self) {
        let unlogged = self.count - self.uids.len() as u64;
        if unlogged > 0 {
            warn!("control socket: refused {unlogged} more clients of other uids");
        }
    }
}

/// A control client, from its request to its answer.
enum ControlClient {
    /// Its request line so far (at most `MAX_REQUEST` bytes).
    Asking { socket: Socket, line: Vec<u8> },
    /// It asked for what takes a while (a reload): watched only to see
    /// it go, which frees its place at once.
    Waiting(Socket),
    /// Being answered.
    Answered(Reply),
}

impl ControlClient {
    fn socket(&self) -> &Socket {
        match self {
            ControlClient::Asking { socket, .. } | ControlClient::Waiting(socket) => socket,
            ControlClient::Answered(reply) => reply.socket(),
        }
    }
}

#[derive(Default)]
pub(super) struct Endpoints {
    pub control: Option<Listener>,
    control_clients: FxHashMap<Token, ControlClient>,
    /// Clients of other uids closed since a trusted one was last
    /// answered, or in the last `REFUSAL_EPISODE`: each uid logged once.
    control_refused: Option<Refusals>,
    /// An accept on the control socket failed for want of fds: its
    /// queued clients are accepted when the back-off ends.
    control_stalled: bool,
    /// The control socket's accept budget ran out with clients possibly
    /// left.
    pub accept_more_control: bool,
    /// `[daemon] metrics`: the Prometheus listener and its scrapers.
    pub metrics: Option<Listener>,
    scrapes: FxHashMap<Token, Scrape>,
    /// The same stall for the metrics listener.
    metrics_stalled: bool,
    /// The scrape budget ran out with scrapers possibly left.
    pub accept_more_scrapers: bool,
    /// The timeout of each scrape and control client, cancelled when it
    /// closes first (or status would count a timer per finished client).
    client_timers: FxHashMap<Token, TimerKey>,
    /// The last resource fault was an accept of one of them.
    accept_fd_fault: bool,
}

/// The options the control socket is opened and kept with.
pub(super) fn control_options() -> ListenOptions {
    ListenOptions {
        socket_mode: Some(CONTROL_SOCKET_MODE),
        ..ListenOptions::default()
    }
}

impl Endpoints {
    /// The control socket or the metrics listener bound to `addr`, if
    /// either is, with the options it is kept with and its name for log
    /// lines.
    pub fn listener_mut(
        &mut self,
        addr: &ListenAddr,
    ) -> Option<(&mut Listener, ListenOptions, &'static str)> {
        if let Some(l) = self.control.as_mut().filter(|l| &l.addr == addr) {
            return Some((l, control_options(), "control socket"));
        }
        self.metrics
            .as_mut()
            .filter(|l| &l.addr == addr)
            .map(|l| (l, ListenOptions::default(), "metrics"))
    }

    /// The control socket and the metrics listener, for the next image of
    /// an upgrade.
    pub fn to_state(&self) -> impl Iterator<Item = ListenerState> + '_ {
        self.control
            .iter()
            .chain(self.metrics.iter())
            .map(listener_state)
    }

    /// Swap the control socket (the old one's file is removed on drop).
    pub fn set_control(&mut self, registry: &Registry, control: Option<Listener>) {
        let old = std::mem::replace(&mut self.control, control);
        swap_watched(registry, old, &self.control, CONTROL, "control socket");
    }

    /// Swap the metrics listener (the old one's file is removed on drop).
    pub fn set_metrics(&mut self, registry: &Registry, metrics: Option<Listener>) {
        let old = std::mem::replace(&mut self.metrics, metrics);
        swap_watched(registry, old, &self.metrics, METRICS, "metrics");
    }

    /// The resource back-off is over: a stalled control socket is to be
    /// accepted on now (true), a stalled metrics listener at this turn's
    /// end.
    pub fn backoff_ended(&mut self) -> bool {
        if std::mem::take(&mut self.metrics_stalled) {
            self.accept_more_scrapers = true;
        }
        std::mem::take(&mut self.control_stalled)
    }

    // ---- control ------------------------------------------------------

    /// Accept one control client, if there is one and room for it.
    pub fn accept_control(&mut self, lp: &mut Loop<'_>) -> Accepted {
        let Some(control) = &self.control else {
            return Accepted::Stop;
        };
        // At the cap the rest wait in the backlog; a reply that ends
        // accepts them (edge-triggered: nothing else would).
        if self.asking_clients() >= MAX_CONTROL_CLIENTS {
            return Accepted::Stop;
        }
        // Its own accept ran out of fds a moment ago: wait for the
        // back-off to end. A fork failure's back-off stalls no status
        // query (it is the moment one is wanted).
        if self.control_stalled && lp.resources.is_paused(Instant::now()) {
            return Accepted::Stop;
        }
        self.control_stalled = false;
        match control.socket.accept() {
            Ok((socket, _)) => {
                if !self.control_peer_trusted(&socket) {
                    // One line it can show, never waited for: a
                    // fresh socket's buffer takes it, or it is lost.
                    let line = format!(
                        "{}{}\n",
                        crate::control::REFUSED,
                        crate::control::refusal_reason()
                    );
                    let _ = socket.send_with_flags(line.as_bytes(), nix::libc::MSG_DONTWAIT);
                    return Accepted::Skipped;
                }
                self.accepted_after_fd_fault(lp.resources);
                self.watch_control_client(lp, socket);
                Accepted::Client
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Stop,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Accepted::Skipped,
            Err(e) if is_resource_error(&e) => {
                // The client stays queued, and nothing would wake us
                // for it again: retried when the back-off ends.
                self.control_stalled = true;
                self.accept_fd_fault = true;
                note_resource_fault(lp.resources, "control socket: accept", &e, Instant::now());
                Accepted::Stop
            }
            Err(e) => {
                warn!("control socket: accept: {e}");
                Accepted::Stop
            }
        }
    }

    /// Watch a trusted client for its request, for `REQUEST_GRACE`
    /// (then it is taken for a client from before requests, and gets the
    /// status).
    fn watch_control_client(&mut self, lp: &mut Loop<'_>, socket: Socket) {
        if socket.set_nonblocking(true).is_err() {
            return;
        }
        let token = lp.tokens.next();
        let fd = socket.as_raw_fd();
        // Registered while a request may be queued already: epoll reports
        // it at once.
        if lp
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
            .is_err()
        {
            return;
        }
        lp.tokens.insert(token, TokenKind::ControlClient);
        let line = Vec::new();
        self.control_clients
            .insert(token, ControlClient::Asking { socket, line });
        let timer = lp
            .timers
            .add(Instant::now() + REQUEST_GRACE, Timer::ControlTimeout(token));
        self.client_timers.insert(token, timer);
    }

    /// A control client is ready: its request once it is whole (the
    /// client then waits for `answer_control`), nothing meanwhile. A
    /// waiting client that went is closed; an answer goes on being
    /// written.
    pub fn on_control_ready(&mut self, lp: &mut Loop<'_>, token: Token) -> Option<ctl::Request> {
        let done = match self.control_clients.get_mut(&token)? {
            ControlClient::Asking { socket, line } => {
                let was_silent = line.is_empty();
                match read_request(socket, line) {
                    Read::More => {
                        // A request begun is no silent client from before
                        // requests: it has the client's whole time to end
                        // its line (a slow writer, a person at socat), not
                        // `REQUEST_GRACE`; given once, at its first bytes.
                        if was_silent && !line.is_empty() {
                            self.give_request_time(lp.timers, token);
                        }
                        return None;
                    }
                    Read::Whole(request) => {
                        // One that sent its request and closed at once: its
                        // hang-up came with the request, and no event will
                        // say it again. Carried out all the same, answered to
                        // nobody.
                        let gone = hung_up(socket);
                        let request = ctl::Request::parse(&request);
                        self.cancel_client_timer(lp.timers, token);
                        return match request {
                            Ok(r) => {
                                self.set_waiting(token);
                                if gone {
                                    self.close_control_client(lp, token);
                                }
                                Some(r)
                            }
                            Err(why) => {
                                self.answer_control(
                                    lp,
                                    token,
                                    Answer::BadRequest(why).to_json_line(),
                                );
                                None
                            }
                        };
                    }
                    Read::TooLong => {
                        self.cancel_client_timer(lp.timers, token);
                        let why = format!("a request is one line of at most {MAX_REQUEST} bytes");
                        self.answer_control(lp, token, Answer::BadRequest(why).to_json_line());
                        return None;
                    }
                    Read::Gone => true,
                }
            }
            ControlClient::Waiting(socket) => hung_up(socket),
            ControlClient::Answered(reply) => reply.flush(),
        };
        if done {
            self.close_control_client(lp, token);
        }
        None
    }

    /// A client's request is whole: it waits for its answer (at once, or
    /// a reload's outcome), out of `MAX_CONTROL_CLIENTS`.
    fn set_waiting(&mut self, token: Token) {
        if let Some(ControlClient::Asking { socket, .. }) = self.control_clients.remove(&token) {
            self.control_clients
                .insert(token, ControlClient::Waiting(socket));
            self.accept_more_control = true;
        }
    }

    /// Clients that count toward `MAX_CONTROL_CLIENTS`: all but those
    /// waiting for a reload's outcome.
    fn asking_clients(&self) -> usize {
        self.control_clients
            .values()
            .filter(|c| !matches!(c, ControlClient::Waiting(_)))
            .count()
    }

    /// Within the bound of clients waiting for a reload, the one that
    /// just asked counted?
    pub fn may_wait(&self) -> bool {
        self.control_clients.len() - self.asking_clients() <= MAX_WAITING_CLIENTS
    }

    /// Answer a client with `bytes` (one JSON line): at once if its
    /// socket takes the answer, else when it is writable, or drop it at
    /// the timeout (a big status for a slow reader). A client gone
    /// meanwhile is not answered.
    pub fn answer_control(&mut self, lp: &mut Loop<'_>, token: Token, bytes: Vec<u8>) {
        let socket = match self.control_clients.remove(&token) {
            Some(ControlClient::Asking { socket, .. } | ControlClient::Waiting(socket)) => socket,
            Some(answered) => {
                self.control_clients.insert(token, answered);
                return;
            }
            None => return,
        };
        let mut reply = Reply::new(socket, bytes);
        let done = reply.flush();
        let fd = reply.socket().as_raw_fd();
        self.control_clients
            .insert(token, ControlClient::Answered(reply));
        if done
            || lp
                .registry
                .reregister(&mut SourceFd(&fd), token, Interest::WRITABLE)
                .is_err()
        {
            self.close_control_client(lp, token);
            return;
        }
        self.cancel_client_timer(lp.timers, token);
        let timer = lp.timers.add(
            Instant::now() + CONTROL_CLIENT_TIMEOUT,
            Timer::ControlTimeout(token),
        );
        self.client_timers.insert(token, timer);
    }

    /// An accept of the control or metrics socket worked after one of
    /// them ran out of fds: the episode is over (a fork failure's is
    /// not, so only an accept's own fault is ended here).
    fn accepted_after_fd_fault(&mut self, resources: &mut Backoff) {
        if std::mem::take(&mut self.accept_fd_fault) && resources.success() {
            // What the pause held back is re-armed at this turn's timers
            // (`Backoff::expire` says so after a success).
            info!("resources available again: accepting connections");
        }
    }

    /// SPEC: the control socket answers root and summond's own uid only,
    /// whatever its file mode says. Others are told so and closed; the
    /// first of each uid in an episode (which a trusted client, or the
    /// first refusal a minute after it began, ends) is logged, and how
    /// many more there were at its end.
    fn control_peer_trusted(&mut self, socket: &Socket) -> bool {
        match crate::control::PeerCred::of(socket) {
            Ok(peer) if peer.is_trusted() => {
                if let Some(episode) = self.control_refused.take() {
                    episode.end();
                }
                true
            }
            Ok(peer) => {
                let now = Instant::now();
                if let Some(old) = self
                    .control_refused
                    .take_if(|e| now.duration_since(e.since) >= REFUSAL_EPISODE)
                {
                    old.end();
                }
                let episode = self.control_refused.get_or_insert(Refusals {
                    since: now,
                    count: 0,
                    uids: Vec::new(),
                });
                episode.count += 1;
                if !episode.uids.contains(&peer.uid) && episode.uids.len() < REFUSED_UIDS {
                    episode.uids.push(peer.uid);
                    warn!(
                        "control socket: refused pid {} of uid {}: {}",
                        peer.pid,
                        peer.uid,
                        crate::control::refusal_reason()
                    );
                }
                false
            }
            Err(e) => {
                debug!("control socket: SO_PEERCRED: {e}; closed");
                false
            }
        }
    }

    fn close_control_client(&mut self, lp: &mut Loop<'_>, token: Token) {
        let Some(client) = self.control_clients.remove(&token) else {
            return;
        };
        let _ = lp
            .registry
            .deregister(&mut SourceFd(&client.socket().as_raw_fd()));
        lp.tokens.remove(&token);
        self.cancel_client_timer(lp.timers, token);
        drop(client);
        // Below the cap again: clients may be waiting in the backlog.
        if self.asking_clients() < MAX_CONTROL_CLIENTS {
            self.accept_more_control = true;
        }
    }

    /// A control client that began its request: its deadline becomes
    /// `CONTROL_CLIENT_TIMEOUT` from now.
    fn give_request_time(&mut self, timers: &mut Timers, token: Token) {
        self.cancel_client_timer(timers, token);
        let at = Instant::now() + CONTROL_CLIENT_TIMEOUT;
        let key = timers.add(at, Timer::ControlTimeout(token));
        self.client_timers.insert(token, key);
    }

    /// A scrape or control client closed: its timeout goes with it.
    fn cancel_client_timer(&mut self, timers: &mut Timers, token: Token) {
        if let Some(key) = self.client_timers.remove(&token) {
            timers.cancel(key);
        }
    }

    /// A control client's time is up. One that said nothing since it
    /// connected is one from before requests: true, it gets the status.
    /// One that has not sent a whole request, or not read its whole
    /// answer, is dropped, so idle clients cannot keep summond's fds.
    pub fn control_client_timed_out(&mut self, lp: &mut Loop<'_>, token: Token) -> bool {
        self.client_timers.remove(&token);
        match self.control_clients.get(&token) {
            Some(ControlClient::Asking { line, .. }) if line.is_empty() => {
                self.set_waiting(token);
                true
            }
            Some(client) => {
                match client {
                    ControlClient::Answered(_) => debug!(
                        "control socket: a client did not read its answer within {}s; closed",
                        CONTROL_CLIENT_TIMEOUT.as_secs()
                    ),
                    _ => debug!(
                        "control socket: a client did not send a whole request within {}s; closed",
                        CONTROL_CLIENT_TIMEOUT.as_secs()
                    ),
                }
                self.close_control_client(lp, token);
                false
            }
            None => false,
        }
    }

    // ---- metrics ------------------------------------------------------

    pub fn accept_scrapers(&mut self, lp: &mut Loop<'_>) {
        for _ in 0..SCRAPE_ACCEPT_BUDGET {
            let Some(listener) = &self.metrics else {
                return;
            };
            // At the cap a new scraper takes the place of the one whose
            // request has been incomplete longest (or else of one waiting
            // to close after its answer, or else of the answer stalled
            // longest: `Evictable`), so clients trickling their request,
            // or never reading a big page, cannot make whole ones wait
            // behind them.
            let full = self.scrapes.len() >= MAX_SCRAPES;
            // Its own accept ran out of fds a moment ago: wait for the
            // back-off to end (a fork failure's stalls no scrape).
            if self.metrics_stalled && lp.resources.is_paused(Instant::now()) {
                return;
            }
            self.metrics_stalled = false;
            let socket = match listener.socket.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_error(&e) => {
                    // The scraper stays queued, and nothing would wake us
                    // for it again: retried when the back-off ends.
                    self.metrics_stalled = true;
                    self.accept_fd_fault = true;
                    note_resource_fault(lp.resources, "metrics: accept", &e, Instant::now());
                    return;
                }
                Err(e) => {
                    warn!("metrics: accept: {e}");
                    return;
                }
            };
            self.accepted_after_fd_fault(lp.resources);
            if full {
                self.evict_a_scrape(lp);
            }
            if let Ok(scrape) = Scrape::new(socket) {
                self.watch_scrape(lp, scrape);
            }
        }
        // More may be queued: epoll reports them again only for new ones.
        self.accept_more_scrapers = true;
    }

    /// A scraper accepted: into the poll set under a token of its own,
    /// with its `SCRAPE_TIMEOUT`; one that cannot be watched is closed.
    fn watch_scrape(&mut self, lp: &mut Loop<'_>, scrape: Scrape) {
        let token = lp.tokens.next();
        let fd = scrape.socket.as_raw_fd();
        if lp
            .registry
            .register(
                &mut SourceFd(&fd),
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return;
        }
        lp.tokens.insert(token, TokenKind::Scrape);
        self.scrapes.insert(token, scrape);
        let timer = lp.timers.add(
            Instant::now() + prom::SCRAPE_TIMEOUT,
            Timer::ScrapeTimeout(token),
        );
        self.client_timers.insert(token, timer);
    }

    /// Close the scrape a new one may replace at the cap, if any.
    fn evict_a_scrape(&mut self, lp: &mut Loop<'_>) {
        let victim = self
            .scrapes
            .iter()
            .map(|(token, s)| (s.evictable(), *token))
            .min();
        if let Some((_, token)) = victim {
            debug!("metrics: {MAX_SCRAPES} scrapes open; closed the slowest for a new one");
            self.close_scrape(lp, token);
        }
    }

    /// A scraper is ready: read its request, or write what is left of its
    /// answer. The page it asked for (`Metrics` or `StatusPage`), if it
    /// did: the caller renders it and hands it to `answer_scrape`.
    pub fn on_scrape_ready(&mut self, lp: &mut Loop<'_>, token: Token) -> Option<Request> {
        let scrape = self.scrapes.get_mut(&token)?;
        let state = match scrape.on_ready() {
            ScrapeState::Asked(request) => {
                let answer = match request {
                    Request::Metrics | Request::StatusPage => return Some(request),
                    Request::NotFound => prom::response(404, "only / and /metrics are here\n"),
                    Request::Bad(405) => prom::response_with(
                        405,
                        "text/plain; charset=utf-8",
                        "Allow: GET, HEAD\r\n",
                        "only GET and HEAD\n",
                    ),
                    Request::Bad(code) => prom::response(code, "bad request\n"),
                    Request::Incomplete => return None,
                };
                scrape.answer(answer)
            }
            other => other,
        };
        self.scrape_went(lp, token, state);
        None
    }

    /// Answer the scraper that asked for a page with `response`, a whole
    /// HTTP response.
    pub fn answer_scrape(&mut self, lp: &mut Loop<'_>, token: Token, response: Vec<u8>) {
        let Some(scrape) = self.scrapes.get_mut(&token) else {
            return;
        };
        let state = scrape.answer(response);
        self.scrape_went(lp, token, state);
    }

    /// Where a scrape's exchange is now.
    fn scrape_went(&mut self, lp: &mut Loop<'_>, token: Token, state: ScrapeState) {
        match state {
            ScrapeState::Done => self.close_scrape(lp, token),
            // Its own short deadline to close its end, whatever was left
            // of the scrape's.
            ScrapeState::Lingering => {
                self.cancel_client_timer(lp.timers, token);
                let timer = lp
                    .timers
                    .add(Instant::now() + prom::LINGER, Timer::ScrapeTimeout(token));
                self.client_timers.insert(token, timer);
                // At the cap, a scraper in the backlog may take its place.
                if self.scrapes.len() >= MAX_SCRAPES {
                    self.accept_more_scrapers = true;
                }
            }
            _ => {}
        }
    }

    fn close_scrape(&mut self, lp: &mut Loop<'_>, token: Token) {
        lp.tokens.remove(&token);
        self.cancel_client_timer(lp.timers, token);
        if let Some(scrape) = self.scrapes.remove(&token) {
            let _ = lp
                .registry
                .deregister(&mut SourceFd(&scrape.socket.as_raw_fd()));
            // Below the cap again: scrapers may wait in the backlog.
            if self.scrapes.len() + 1 == MAX_SCRAPES {
                self.accept_more_scrapers = true;
            }
        }
    }

    /// A scrape that has not finished by its deadline is dropped.
    pub fn scrape_timed_out(&mut self, lp: &mut Loop<'_>, token: Token) {
        if self.scrapes.contains_key(&token) {
            debug!(
                "metrics: a scraper took longer than {:?}; closed",
                prom::SCRAPE_TIMEOUT
            );
            self.close_scrape(lp, token);
        }
    }
}

/// Stop watching `old` (dropping it) and watch `new`, the listener now in
/// the slot for `token` (the control or metrics socket).
fn swap_watched(
    registry: &Registry,
    old: Option<Listener>,
    new: &Option<Listener>,
    token: Token,
    what: &str,
) {
    if let Some(old) = old {
        let _ = registry.deregister(&mut SourceFd(&old.socket.as_raw_fd()));
    }
    if let Some(new) = new {
        // summond accepts on it itself; a handed one may be blocking.
        if let Err(e) = new.socket.set_nonblocking(true) {
            error!("{what} {}: {e}", new.addr);
        }
        if let Err(e) = registry.register(
            &mut SourceFd(&new.socket.as_raw_fd()),
            token,
            Interest::READABLE,
        ) {
            error!("{what} {}: {e}", new.addr);
        }
    }
}

/// What a read of a control client's request gave.
enum Read {
    /// Not the whole line yet.
    More,
    /// The line (without its newline), or what came before EOF (empty:
    /// the client shut down its side without a word, asking the status).
    Whole(Vec<u8>),
    /// More than `MAX_REQUEST` bytes without a newline: told so.
    TooLong,
    /// An error.
    Gone,
}

/// Read what `socket` sent of its request into `line`, without blocking.
fn read_request(socket: &Socket, line: &mut Vec<u8>) -> Read {
    use std::io::Read as _;
    let mut buf = [0u8; MAX_REQUEST];
    loop {
        match (&*socket).read(&mut buf[..MAX_REQUEST - line.len().min(MAX_REQUEST)]) {
            Ok(0) => return Read::Whole(std::mem::take(line)),
            Ok(n) => {
                line.extend_from_slice(&buf[..n]);
                if let Some(end) = line.iter().position(|b| *b == b'\n') {
                    line.truncate(end);
                    return Read::Whole(std::mem::take(line));
                }
                if line.len() >= MAX_REQUEST {
                    line.clear();
                    discard_input(socket);
                    return Read::TooLong;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::More,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Read::Gone,
        }
    }
}

/// Read and drop what a client sent past its request, as far as it is
/// there now and up to 64 KiB: a Unix socket closed with unread input
/// resets its peer, whose read of the answer then fails.
fn discard_input(socket: &Socket) {
    use std::io::Read as _;
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match (&*socket).read(&mut buf) {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

/// Has the peer of a waiting client closed its socket? (A client that
/// only shut down its sending side still waits for its answer.)
fn hung_up(socket: &Socket) -> bool {
    let mut fds = [nix::libc::pollfd {
        fd: socket.as_raw_fd(),
        events: 0,
        revents: 0,
    }];
    // SAFETY: poll(2) on one fd we own, not waiting.
    let n = unsafe { nix::libc::poll(fds.as_mut_ptr(), 1, 0) };
    n > 0 && fds[0].revents & (nix::libc::POLLHUP | nix::libc::POLLERR) != 0
}
